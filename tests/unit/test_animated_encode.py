"""encode_apng, encode_animated_webp and encode_webm: every frame, duration and the loop count
as given, read back with Pillow and PyAV."""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import pytest
from PIL import Image

from toonq.worker.engine.animated_encode import (
    encode_animated_webp,
    encode_apng,
    encode_webm,
)


def _frames(height: int = 30, width: int = 41, seed: int = 0) -> list[np.ndarray]:
    """Five RGBA frames: noise, the same noise twice more, then two fully transparent frames
    (identical neighbours, which animation writers are tempted to merge)."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    blank = np.zeros_like(noise)
    return [noise, noise, noise.copy(), blank, blank.copy()]


DURATIONS = [100, 40, 70, 1234, 5000]


@dataclass(frozen=True)
class PillowAnimation:
    format: str
    size: tuple[int, int]
    frames: list[np.ndarray]
    durations: list[float]
    loop: int


def read_with_pillow(data: bytes) -> PillowAnimation:
    """Every frame of an APNG or animated WebP as RGBA, with its duration."""
    image = Image.open(io.BytesIO(data))
    assert image.format is not None
    frames, durations = [], []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(np.asarray(image.convert("RGBA")))  # loads the frame, and its duration
        durations.append(image.info["duration"])
    return PillowAnimation(image.format, image.size, frames, durations, image.info["loop"])


@dataclass(frozen=True)
class WebmVideo:
    codec: str
    size: tuple[int, int]
    audio_streams: int
    frames: list[np.ndarray]
    durations_ms: list[int]
    alpha_mode: str | None


def read_webm(data: bytes) -> WebmVideo:
    """A WebM's VP9 frames as RGBA (libvpx's decoder: FFmpeg's own drops the alpha), and each
    packet's duration."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        decoder = av.CodecContext.create("libvpx-vp9", "r")
        frames: list[np.ndarray] = []
        durations: list[int] = []
        for packet in container.demux(stream):
            if packet.pts is not None and packet.duration is not None:
                durations.append(int(packet.duration * packet.time_base * 1000))
            frames.extend(frame.to_ndarray(format="rgba") for frame in decoder.decode(packet))
        return WebmVideo(
            codec=stream.codec_context.name,
            size=(stream.width, stream.height),
            audio_streams=len(container.streams.audio),
            frames=frames,
            durations_ms=durations,
            alpha_mode=stream.metadata.get("alpha_mode"),
        )


def _disc_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """An opaque red disc moving over a transparent background."""
    rows, columns = np.mgrid[0:height, 0:width]
    frames = []
    for index in range(count):
        frame = np.zeros((height, width, 4), dtype=np.uint8)
        disc = (columns - width // 3 - index) ** 2 + (rows - height // 2) ** 2 < (height // 3) ** 2
        frame[disc] = (255, 40, 0, 255)
        frames.append(frame)
    return frames


@pytest.mark.parametrize("loop", [0, 1, 3])
def test_apng_keeps_every_frame_its_duration_and_the_loop(loop):
    frames = _frames()
    animation = read_with_pillow(encode_apng(frames, DURATIONS, loop))
    assert animation.format == "PNG"
    assert animation.size == (41, 30)
    assert animation.durations == DURATIONS
    assert animation.loop == loop
    assert len(animation.frames) == len(frames)
    for read, given in zip(animation.frames, frames, strict=True):
        assert np.array_equal(read, given)


@pytest.mark.parametrize("encode", [encode_apng, encode_animated_webp])
def test_a_frame_of_0_ms_is_kept(encode):
    frames = _frames()[:3]
    animation = read_with_pillow(encode(frames, [100, 0, 50], 0))
    assert animation.durations == [100, 0, 50]


def test_webm_refuses_a_frame_of_0_ms():
    with pytest.raises(ValueError, match="at least 1 ms"):
        encode_webm(_frames()[:2], [100, 0])


def test_apng_stores_long_durations_exactly():
    frames = _frames()[:2]
    animation = read_with_pillow(encode_apng(frames, [70_000, 123_450], 0))
    assert animation.durations == [70_000, 123_450]


def test_apng_palette_has_at_most_the_colours_asked_for_and_keeps_the_frames():
    frames = _frames(seed=1)
    lossless = encode_apng(frames, DURATIONS, 2)
    data = encode_apng(frames, DURATIONS, 2, compress_level=9, colours=64)
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P"
    assert len(image.getpalette("RGBA") or []) // 4 <= 64
    animation = read_with_pillow(data)
    assert animation.durations == DURATIONS
    assert animation.loop == 2
    assert len(animation.frames) == len(frames)
    assert len(data) < len(lossless)
    assert (animation.frames[3][..., 3] == 0).all()  # transparent stays transparent


@pytest.mark.parametrize("loop", [0, 4])
def test_lossless_webp_keeps_every_frame_its_duration_and_the_loop(loop):
    frames = _frames(seed=2)
    animation = read_with_pillow(encode_animated_webp(frames, DURATIONS, loop))
    assert animation.format == "WEBP"
    assert animation.size == (41, 30)
    assert animation.durations == DURATIONS
    assert animation.loop == loop
    for read, given in zip(animation.frames, frames, strict=True):
        visible = given[..., 3] > 0
        assert np.array_equal(read[visible], given[visible])
        assert np.array_equal(read[..., 3], given[..., 3])


def test_lossy_webp_keeps_the_frames_and_is_smaller():
    frames = _frames(seed=3)
    lossless = encode_animated_webp(frames, DURATIONS, 0)
    lossy = encode_animated_webp(frames, DURATIONS, 0, lossless=False, quality=30, method=4)
    animation = read_with_pillow(lossy)
    assert animation.durations == DURATIONS
    assert len(animation.frames) == len(frames)
    assert len(lossy) < len(lossless)


def test_apng_of_a_moving_cut_out_reads_back_exactly_and_stores_only_what_changed():
    frames = _disc_frames(6, 48, 64)
    data = encode_apng(frames, [50] * 6, 0)
    animation = read_with_pillow(data)
    for read, given in zip(animation.frames, frames, strict=True):
        assert np.array_equal(read, given)
    whole_frames = sum(len(encode_apng([frame], [50], 0)) for frame in frames)
    assert len(data) < whole_frames


def test_webm_is_vp9_with_alpha_and_each_frame_keeps_its_duration():
    frames = _disc_frames(6, 48, 64)
    durations = [40, 40, 100, 33, 250, 60]
    video = read_webm(encode_webm(frames, durations))
    assert video.codec == "vp9"
    assert video.size == (64, 48)
    assert video.audio_streams == 0
    assert video.alpha_mode == "1"
    assert video.durations_ms == durations
    assert len(video.frames) == len(frames)
    alpha = video.frames[0][..., 3]
    assert alpha.min() < 16  # the transparent background
    assert alpha.max() > 240  # the opaque disc


def test_webm_pads_odd_sides_with_transparency():
    frames = [np.full((31, 45, 4), 255, dtype=np.uint8)] * 2
    video = read_webm(encode_webm(frames, [100, 100]))
    assert video.size == (46, 32)
    assert video.frames[0][:31, :45, 3].min() > 240
    assert video.frames[0][31, :, 3].max() < 16


def test_webm_bitrate_and_crf_trade_size():
    frames = [
        np.random.default_rng(seed).integers(0, 256, (64, 64, 4), dtype=np.uint8)
        for seed in range(4)
    ]
    fine = encode_webm(frames, [100] * 4, crf=10)
    coarse = encode_webm(frames, [100] * 4, crf=60)
    constrained = encode_webm(frames, [100] * 4, bitrate=50_000)
    assert len(coarse) < len(fine)
    assert len(read_webm(constrained).frames) == 4


@pytest.mark.parametrize(
    "encode", [encode_apng, encode_animated_webp, lambda f, d, _: encode_webm(f, d)]
)
@pytest.mark.parametrize(
    ("frames", "durations", "problem"),
    [
        ([], [], "at least one frame"),
        (_frames()[:2], [100], "2 frames but 1 durations"),
        (_frames()[:2], [100, -1], "0 ms or more"),
        ([np.zeros((4, 4, 4), np.uint8), np.zeros((4, 5, 4), np.uint8)], [1, 1], "one size"),
        ([np.zeros((4, 4, 3), np.uint8)], [1], "RGBA"),
    ],
)
def test_bad_animations_are_refused(encode, frames, durations, problem):
    with pytest.raises(ValueError, match=problem):
        encode(frames, durations, 0)
