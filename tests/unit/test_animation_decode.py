"""decode_animation and count_frames: every frame of a GIF, APNG or animated WebP as the full
canvas a viewer shows, their durations and plays, stills, the limits, and damaged files.

GIFs and APNGs are built byte by byte here, so that each frame's rectangle, disposal, blending
and transparency are exactly those the expected canvases are drawn from.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import Blend, Disposal

from tests.image_corpus import chunk, exif_block, noise, save
from toonq.shared.errors import (
    ImageTooLargeError,
    InvalidImageError,
    TooManyFramesError,
    UnsupportedFormatError,
)
from toonq.worker.engine.animation import Animation, count_frames, decode_animation
from toonq.worker.engine.decode import decode_image, decode_pixels
from toonq.worker.engine.frame_headers import may_be_animated

CLEAR = (0, 0, 0, 0)
RED = (255, 0, 0, 255)
GREEN = (0, 255, 0, 255)
BLUE = (0, 0, 255, 255)


def _animation(
    data: bytes,
    *,
    max_pixels: int = 10_000_000,
    max_frames: int = 300,
    max_duration_s: float = 60.0,
) -> Animation | None:
    return decode_animation(
        data, max_pixels=max_pixels, max_frames=max_frames, max_duration_s=max_duration_s
    )


def _decode(data: bytes) -> Animation:
    animation = _animation(data)
    assert animation is not None
    for frame in animation.frames:
        assert frame.dtype == np.uint8
        assert frame.shape == (animation.height, animation.width, 4)
        assert frame.flags.c_contiguous
        assert frame.flags.writeable
    return animation


def _canvas(height: int, width: int, colour: tuple[int, int, int, int]) -> np.ndarray:
    return np.full((height, width, 4), colour, dtype=np.uint8)


# --- GIF, built by hand ---------------------------------------------------------------------------

#: Palette index -> colour; index 0 is the transparent one (black, so that a transparent pixel
#: reads (0, 0, 0, 0) whichever way it became transparent).
GIF_PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
TRANSPARENT = 0


@dataclass
class GifFrame:
    indices: np.ndarray  # h×w palette indices
    x: int = 0
    y: int = 0
    disposal: int = 1
    delay_cs: int = 10


def _lzw(indices: bytes) -> bytes:
    """GIF pixel data that LZW decodes to `indices`: each a 9-bit literal code, with a clear code
    often enough that the code width never grows."""
    clear, end = 256, 257
    codes: list[int] = []
    for start in range(0, len(indices), 100):
        codes += [clear, *indices[start : start + 100]]
    codes.append(end)
    bits = sum(code << (9 * n) for n, code in enumerate(codes))
    packed = bits.to_bytes((9 * len(codes) + 7) // 8, "little")
    blocks = b"".join(
        bytes([len(packed[i : i + 255])]) + packed[i : i + 255] for i in range(0, len(packed), 255)
    )
    return b"\x08" + blocks + b"\x00"


def _gif(width: int, height: int, frames: list[GifFrame], *, loop: int | None = None) -> bytes:
    palette = b"".join(bytes(colour) for colour in GIF_PALETTE).ljust(768, b"\0")
    data = b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0) + palette
    if loop is not None:
        data += b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", loop) + b"\x00"
    for frame in frames:
        packed = (frame.disposal << 2) | 1  # the transparent index is in use
        data += b"!\xf9\x04" + struct.pack("<BHB", packed, frame.delay_cs, TRANSPARENT) + b"\x00"
        rows, columns = frame.indices.shape
        data += b"," + struct.pack("<HHHHB", frame.x, frame.y, columns, rows, 0)
        data += _lzw(frame.indices.astype(np.uint8).tobytes())
    return data + b";"


def _indices(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


def _gif_sample(disposal: int) -> bytes:
    """4×4: red with a transparent corner; then green over (1, 1)-(2, 2) with a transparent
    corner of its own, disposed of by `disposal`; then blue over (2, 2)-(3, 3)."""
    first = np.full((4, 4), 1, dtype=np.uint8)
    first[0, 0] = TRANSPARENT
    second = GifFrame(_indices([[TRANSPARENT, 2], [2, 2]]), x=1, y=1, disposal=disposal)
    third = GifFrame(_indices([[3, 3], [3, 3]]), x=2, y=2, delay_cs=30)
    return _gif(4, 4, [GifFrame(first), second, third])


@pytest.mark.parametrize(
    ("disposal", "after_second"),
    [(1, "kept"), (2, "cleared"), (3, "restored")],
    ids=["keep", "background", "previous"],
)
def test_gif_disposal(disposal, after_second):
    first = _canvas(4, 4, RED)
    first[0, 0] = CLEAR
    second = first.copy()
    second[1, 2] = second[2, 1] = second[2, 2] = GREEN  # (1, 1) is transparent: red shows
    third = {"kept": second, "cleared": first, "restored": first}[after_second].copy()
    if after_second == "cleared":
        third[1:3, 1:3] = CLEAR
    third[2:4, 2:4] = BLUE

    animation = _decode(_gif_sample(disposal))

    assert (animation.width, animation.height) == (4, 4)
    assert len(animation.frames) == 3
    for decoded, expected in zip(animation.frames, [first, second, third], strict=True):
        assert np.array_equal(decoded, expected)
    assert animation.durations_ms == [100, 100, 300]
    assert animation.total_ms == 500


@pytest.mark.parametrize(("netscape_loop", "plays"), [(None, 1), (0, 0), (1, 2), (2, 3)])
def test_gif_loop_counts_plays(netscape_loop, plays):
    frames = [GifFrame(_indices([[1]])), GifFrame(_indices([[2]]))]
    assert _decode(_gif(1, 1, frames, loop=netscape_loop)).loop == plays


def test_gif_frame_past_the_canvas_is_clipped():
    """Viewers clip a frame to the logical screen; Pillow would grow the canvas instead."""
    frames = [GifFrame(_indices([[1, 1], [1, 1]])), GifFrame(_indices([[2, 3]]), x=1, y=1)]
    animation = _decode(_gif(2, 2, frames))
    second = _canvas(2, 2, RED)
    second[1, 1] = GREEN
    assert [frame.shape for frame in animation.frames] == [(2, 2, 4), (2, 2, 4)]
    assert np.array_equal(animation.frames[1], second)


def test_gif_written_by_pillow():
    """A GIF Pillow writes (its own LZW, palette and frame rectangles)."""
    colours = [RED, GREEN, BLUE]
    frames = [Image.new("RGB", (5, 3), colour[:3]) for colour in colours]
    data = save(
        frames[0], "GIF", save_all=True, append_images=frames[1:], duration=[40, 50, 60], loop=2
    )
    animation = _decode(data)
    for decoded, colour in zip(animation.frames, colours, strict=True):
        assert np.array_equal(decoded, _canvas(3, 5, colour))
    assert animation.durations_ms == [40, 50, 60]
    assert animation.loop == 3


# --- APNG, built by hand --------------------------------------------------------------------------


@dataclass
class ApngFrame:
    pixels: np.ndarray  # h×w×4 RGBA
    x: int = 0
    y: int = 0
    dispose: int = Disposal.OP_NONE
    blend: int = Blend.OP_SOURCE
    delay: tuple[int, int] = (1, 10)  # seconds, as numerator and denominator


def _apng(
    frames: list[ApngFrame], *, plays: int = 0, default_image: np.ndarray | None = None
) -> bytes:
    """An RGBA APNG whose canvas is the first frame's size (or the default image's)."""
    height, width = (frames[0].pixels if default_image is None else default_image).shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    data += chunk(b"acTL", struct.pack(">II", len(frames), plays))
    if default_image is not None:
        data += chunk(b"IDAT", _zlib_rows(default_image))
    sequence = 0
    for number, frame in enumerate(frames):
        rows, columns = frame.pixels.shape[:2]
        control = struct.pack(
            ">IIIIIHHBB", sequence, columns, rows, frame.x, frame.y, *frame.delay,
            frame.dispose, frame.blend,
        )  # fmt: skip
        data += chunk(b"fcTL", control)
        sequence += 1
        if number == 0 and default_image is None:
            data += chunk(b"IDAT", _zlib_rows(frame.pixels))
        else:
            data += chunk(b"fdAT", struct.pack(">I", sequence) + _zlib_rows(frame.pixels))
            sequence += 1
    return data + chunk(b"IEND", b"")


def _zlib_rows(pixels: np.ndarray) -> bytes:
    return zlib.compress(b"".join(b"\0" + row.tobytes() for row in pixels.astype(np.uint8)))


HALF_RED = (255, 0, 0, 128)
FAINT_BLUE = (0, 0, 255, 100)


def _apng_backdrop() -> np.ndarray:
    """3×4: opaque blue on the left half, faint blue on the right."""
    backdrop = _canvas(3, 4, BLUE)
    backdrop[:, 2:] = FAINT_BLUE
    return backdrop


def _apng_sample(dispose: int, blend: int) -> bytes:
    """The backdrop; then half-red over columns 1..2 (its top-left pixel clear), blended with
    `blend` and disposed of by `dispose`; then one green pixel at (0, 0)."""
    overlay = _canvas(3, 2, HALF_RED)
    overlay[0, 0] = CLEAR
    return _apng(
        [
            ApngFrame(_apng_backdrop()),
            ApngFrame(overlay, x=1, dispose=dispose, blend=blend),
            ApngFrame(_canvas(1, 1, GREEN), delay=(1, 3)),
        ]
    )


#: Half-red over each backdrop pixel, worked out by hand from Porter-Duff "over" on straight
#: alpha: a = as + ad(1 - as), c = (cs as + cd ad (1 - as)) / a.
HALF_RED_OVER_BLUE = (128, 0, 127, 255)
HALF_RED_OVER_FAINT_BLUE = (184, 0, 71, 178)


@pytest.mark.parametrize("blend", [Blend.OP_SOURCE, Blend.OP_OVER], ids=["source", "over"])
@pytest.mark.parametrize(
    "dispose",
    [Disposal.OP_NONE, Disposal.OP_BACKGROUND, Disposal.OP_PREVIOUS],
    ids=["none", "background", "previous"],
)
def test_apng_blend_and_dispose(dispose, blend):
    first = _apng_backdrop()
    second = first.copy()
    if blend == Blend.OP_SOURCE:
        second[:, 1:3] = HALF_RED
        second[0, 1] = CLEAR  # the clear pixel replaces the backdrop
    else:
        second[1:, 1] = HALF_RED_OVER_BLUE
        second[1:, 2] = HALF_RED_OVER_FAINT_BLUE
        second[0, 2] = HALF_RED_OVER_FAINT_BLUE  # (0, 1) is clear: the backdrop shows
    third = {
        Disposal.OP_NONE: second.copy(),
        Disposal.OP_BACKGROUND: first.copy(),
        Disposal.OP_PREVIOUS: first.copy(),
    }[dispose]
    if dispose == Disposal.OP_BACKGROUND:
        third[:, 1:3] = CLEAR
    third[0, 0] = GREEN

    animation = _decode(_apng_sample(dispose, blend))

    assert len(animation.frames) == 3
    for decoded, expected in zip(animation.frames, [first, second, third], strict=True):
        assert np.array_equal(decoded, expected)
    assert animation.durations_ms == [100, 100, 333]


def test_apng_first_frame_blends_over_transparent_black():
    """The canvas starts transparent black, so OP_OVER on the first frame leaves it as stored;
    OP_PREVIOUS on the first frame restores it to transparent black."""
    first = noise(3, 4, 4, seed=3)
    data = _apng(
        [
            ApngFrame(first, blend=Blend.OP_OVER, dispose=Disposal.OP_PREVIOUS),
            ApngFrame(_canvas(1, 1, RED)),
        ]
    )
    animation = _decode(data)
    second = _canvas(3, 4, CLEAR)
    second[0, 0] = RED
    assert np.array_equal(animation.frames[0], first)
    assert np.array_equal(animation.frames[1], second)


def test_apng_default_image_is_not_a_frame():
    frames = [ApngFrame(_canvas(2, 2, RED)), ApngFrame(_canvas(2, 2, GREEN))]
    data = _apng(frames, default_image=_canvas(2, 2, BLUE))
    animation = _decode(data)
    assert [frame[0, 0].tolist() for frame in animation.frames] == [list(RED), list(GREEN)]
    assert count_frames(data, max_pixels=100) == 2


@pytest.mark.parametrize(("delay", "ms"), [((1, 10), 100), ((7, 0), 70), ((1, 3), 333)])
def test_apng_delay_fraction(delay, ms):
    frames = [ApngFrame(_canvas(1, 1, RED), delay=delay), ApngFrame(_canvas(1, 1, BLUE))]
    assert _decode(_apng(frames)).durations_ms == [ms, 100]


@pytest.mark.parametrize("plays", [0, 1, 3])
def test_apng_plays(plays):
    frames = [ApngFrame(_canvas(1, 1, RED)), ApngFrame(_canvas(1, 1, BLUE))]
    assert _decode(_apng(frames, plays=plays)).loop == plays


def test_apng_written_by_pillow():
    frames = [Image.fromarray(noise(4, 5, 4, seed=seed)) for seed in range(3)]
    data = save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=[20, 30, 40])
    animation = _decode(data)
    for decoded, frame in zip(animation.frames, frames, strict=True):
        assert np.array_equal(decoded, np.asarray(frame))
    assert animation.durations_ms == [20, 30, 40]


@pytest.mark.parametrize("mode", ["RGB", "P", "LA"])
def test_apng_of_other_modes_written_by_pillow(mode):
    """Each frame's region is converted to RGBA as a still is (tRNS and palettes to alpha)."""
    channels = 3 if mode == "P" else 4  # Pillow's RGBA to P keeps no alpha
    frames = [Image.fromarray(noise(4, 5, channels, seed=seed)).convert(mode) for seed in range(3)]
    # one palette index of the first frame's made transparent (Pillow's web palette is shared)
    options = {"transparency": frames[0].getpixel((0, 0))} if mode == "P" else {}
    data = save(frames[0], "PNG", save_all=True, append_images=frames[1:], **options)
    expected = [
        np.asarray(decode_image(save(frame, "PNG", **options), max_pixels=100)) for frame in frames
    ]
    for decoded, frame in zip(_decode(data).frames, expected, strict=True):
        assert np.array_equal(decoded, frame)
    assert (expected[0][..., 3] < 255).any() == (mode != "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_orientation_turns_every_frame_upright(fmt):
    stored = [noise(2, 3, 4, seed=seed) for seed in range(2)]
    stored[0][..., 3] = stored[1][..., 3] = 255
    images = [Image.fromarray(frame) for frame in stored]
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = save(
        images[0], fmt, save_all=True, append_images=images[1:], exif=exif_block(6)[6:], **options
    )
    animation = _decode(data)
    assert (animation.width, animation.height) == (2, 3)
    for decoded, frame in zip(animation.frames, stored, strict=True):
        assert np.array_equal(decoded, np.rot90(frame, -1))


# --- Animated WebP --------------------------------------------------------------------------------


def _webp(frames: list[np.ndarray], durations: list[int], loop: int = 0) -> bytes:
    images = [Image.fromarray(frame) for frame in frames]
    return save(
        images[0],
        "WEBP",
        save_all=True,
        append_images=images[1:],
        duration=durations,
        loop=loop,
        lossless=True,
        exact=True,
    )


def test_webp_frames_durations_and_plays():
    frames = [noise(6, 5, 4, seed=seed) for seed in range(3)]
    frames[1][2:4, 1:3, 3] = 0  # clear pixels: the canvas must not show the first frame there
    animation = _decode(_webp(frames, [30, 40, 50], loop=2))
    for decoded, frame in zip(animation.frames, frames, strict=True):
        # libwebp keeps no colour under a clear pixel
        assert np.array_equal(decoded, np.where(frame[..., 3:] == 0, 0, frame))
    assert animation.durations_ms == [30, 40, 50]
    assert animation.loop == 2


def test_webp_forever():
    frames = [_canvas(2, 2, RED), _canvas(2, 2, BLUE)]
    assert _decode(_webp(frames, [10, 10])).loop == 0


# --- Stills and frame counts ---------------------------------------------------------------------


STILLS = {
    "png": save(Image.new("RGBA", (3, 2), RED), "PNG"),
    "gif": _gif(2, 2, [GifFrame(_indices([[1, 2], [3, 1]]))]),
    "webp": save(Image.new("RGBA", (3, 2), RED), "WEBP", lossless=True),
    "one-frame-apng": _apng([ApngFrame(_canvas(2, 2, RED))]),
    "jpeg": save(Image.new("RGB", (3, 2), RED[:3]), "JPEG"),
    "bmp": save(Image.new("RGB", (3, 2), RED[:3]), "BMP"),
}


@pytest.mark.parametrize("data", STILLS.values(), ids=STILLS.keys())
def test_a_still_is_not_an_animation(data):
    assert _animation(data) is None
    assert count_frames(data, max_pixels=100) == 1


ANIMATIONS = {
    "gif": (_gif_sample(1), 3),
    "apng": (_apng_sample(Disposal.OP_NONE, Blend.OP_OVER), 3),
    "webp": (_webp([_canvas(2, 2, RED), _canvas(2, 2, BLUE)], [10, 10]), 2),
}


@pytest.mark.parametrize("data", [data for data, _ in ANIMATIONS.values()], ids=ANIMATIONS.keys())
def test_an_animation_is_never_taken_for_a_still_by_its_first_bytes(data):
    assert may_be_animated(data)


@pytest.mark.parametrize("name", ["png", "webp", "jpeg", "bmp"])
def test_a_still_png_webp_jpeg_or_bmp_is_told_by_its_first_bytes(name):
    assert not may_be_animated(STILLS[name])


@pytest.mark.parametrize(("data", "frames"), ANIMATIONS.values(), ids=ANIMATIONS.keys())
def test_count_frames_agrees_with_the_decode(data, frames):
    assert count_frames(data, max_pixels=100) == frames
    assert len(_decode(data).frames) == frames


def test_count_frames_checks_the_header_like_a_still():
    with pytest.raises(ImageTooLargeError):
        count_frames(_gif_sample(1), max_pixels=15)  # one 4×4 frame is over the limit
    with pytest.raises(UnsupportedFormatError):
        count_frames(b"not an image at all", max_pixels=100)


# --- Limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [data for data, _ in ANIMATIONS.values()], ids=ANIMATIONS.keys())
def test_too_many_frames(data):
    frames = count_frames(data, max_pixels=100)
    with pytest.raises(TooManyFramesError) as caught:
        _animation(data, max_frames=frames - 1)
    assert caught.value.code == "too_many_frames"
    assert f"{frames} frames" in str(caught.value)
    assert f"limit of {frames - 1}" in str(caught.value)
    assert "TOONQ_MAX_FRAMES" in str(caught.value)
    assert _animation(data, max_frames=frames) is not None


def test_too_long():
    data = _gif_sample(1)  # 100 + 100 + 300 ms
    with pytest.raises(TooManyFramesError) as caught:
        _animation(data, max_duration_s=0.4)
    assert caught.value.code == "too_many_frames"
    assert "0.5 s" in str(caught.value)
    assert "limit of 0.4 s" in str(caught.value)
    assert "TOONQ_MAX_ANIMATION_S" in str(caught.value)
    assert _animation(data, max_duration_s=0.5) is not None


def test_the_pixel_limit_counts_every_frame():
    data = _gif_sample(1)  # three 4×4 frames: 16 pixels each, 48 in all
    with pytest.raises(ImageTooLargeError) as caught:
        _animation(data, max_pixels=47)
    assert type(caught.value) is ImageTooLargeError
    assert caught.value.code == "image_too_large"
    assert "3 frames of 4x4 = 48 pixels" in str(caught.value)
    assert "limit of 47 pixels" in str(caught.value)
    assert _animation(data, max_pixels=48) is not None


def test_limits_are_checked_from_the_headers():
    """A GIF declaring 1000 frames whose pixel data are all cut short is refused for its
    frames, not decoded."""
    one = _gif(1, 1, [GifFrame(_indices([[1]]))])
    header = one[: one.index(b"!\xf9")]
    no_pixels = b"!\xf9\x04\x05\x0a\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x08\x00"
    cut_short = header + no_pixels * 1000 + b";"
    assert count_frames(cut_short, max_pixels=100) == 1000
    with pytest.raises(TooManyFramesError):
        _animation(cut_short)


# --- Damaged files --------------------------------------------------------------------------------


def _offsets(data: bytes | bytearray, marker: bytes, count: int) -> list[int]:
    offsets = [at for at in range(len(data)) if data.startswith(marker, at)]
    assert len(offsets) == count  # the marker occurs nowhere else
    return offsets


#: Each sample and where its third frame's pixel data starts: after a GIF's Graphic Control
#: Extension (8 bytes), image descriptor (10) and LZW code size (1); after an fdAT chunk's type
#: and sequence number.
TRUNCATED = {
    "gif": (_gif_sample(2), b"!\xf9\x04", 3, 19),
    "apng": (_apng_sample(Disposal.OP_BACKGROUND, Blend.OP_OVER), b"fdAT", 2, 8),
}


@pytest.mark.parametrize(("data", "marker", "count", "skip"), TRUNCATED.values(), ids=TRUNCATED)
def test_a_truncated_animation_keeps_the_frames_that_decode(data, marker, count, skip):
    whole = _decode(data)
    cut = data[: _offsets(data, marker, count)[-1] + skip + 5]

    assert count_frames(cut, max_pixels=100) == 3  # the third frame's header is whole
    animation = _decode(cut)
    assert len(animation.frames) == 2
    for decoded, expected in zip(animation.frames, whole.frames[:2], strict=True):
        assert np.array_equal(decoded, expected)
    assert animation.durations_ms == whole.durations_ms[:2]
    assert animation.loop == whole.loop


def test_a_first_frame_that_does_not_decode_is_invalid():
    gif = bytearray(_gif_sample(1))
    gif[_offsets(gif, b"!\xf9\x04", 3)[0] + 18] = 13  # an LZW code size over 12 bits
    apng = bytearray(_apng_sample(Disposal.OP_NONE, Blend.OP_SOURCE))
    at = apng.index(b"IDAT") + 4
    apng[at : at + 12] = b"\xff" * 12  # not a zlib stream
    for data in (gif, apng):
        with pytest.raises(InvalidImageError) as caught:
            _animation(bytes(data))
        assert type(caught.value) is InvalidImageError
        assert "first frame" in str(caught.value)


def test_an_animation_cut_in_its_first_frame_is_a_still_that_does_not_decode():
    """Only the first frame's header is whole: no animation, and the still path refuses it."""
    data = _gif_sample(1)
    cut = data[: _offsets(data, b"!\xf9\x04", 3)[0] + 19 + 5]
    assert count_frames(cut, max_pixels=100) == 1
    assert _animation(cut) is None
    with pytest.raises(InvalidImageError):
        decode_pixels(cut, max_pixels=100)


def test_a_corrupt_frame_ends_the_animation():
    """The second frame's pixel data replaced by noise of the same length: the first frame is
    kept, and nothing after the frame that does not decode."""
    data = bytearray(_apng_sample(Disposal.OP_NONE, Blend.OP_SOURCE))
    start = data.index(b"fdAT") + 8  # after the sequence number
    data[start : start + 12] = b"\xff" * 12
    animation = _decode(bytes(data))
    assert len(animation.frames) == 1
    assert np.array_equal(animation.frames[0], _apng_backdrop())


def test_a_truncated_webp_is_invalid():
    """libwebp's demuxer refuses an animated WebP cut short before any frame is decoded."""
    data = ANIMATIONS["webp"][0]
    with pytest.raises(InvalidImageError):
        _animation(data[: len(data) - 10])


@pytest.mark.parametrize(
    "header",
    [
        _gif_sample(1)[: 13 + 768],  # GIF header and palette
        _apng_sample(Disposal.OP_NONE, Blend.OP_SOURCE)[:33] + chunk(b"acTL", bytes(8)),
        # VP8X: its size, then the flags byte with the animation flag.
        b"RIFF\x00\x01\x00\x00WEBPVP8X" + bytes(4) + b"\x02" + bytes(5),
    ],
    ids=["gif", "apng", "webp"],
)
@pytest.mark.filterwarnings("ignore:Invalid APNG:UserWarning")  # Pillow, on an acTL of 0 frames
def test_garbage_after_the_header(header):
    data = header + bytes(range(256)) * 4
    with pytest.raises(InvalidImageError):
        _animation(data)
    with pytest.raises(InvalidImageError):
        count_frames(data, max_pixels=100)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on malformed metadata
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=150, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    source=st.sampled_from([data for data, _ in ANIMATIONS.values()]),
    position=st.floats(0, 1),
    replacement=st.binary(min_size=0, max_size=8),
    cut=st.booleans(),
)
def test_damaged_animations_decode_or_raise_a_typed_error(source, position, replacement, cut):
    at = int(position * len(source))
    data = source[:at] if cut else source[:at] + replacement + source[at + len(replacement) :]
    try:
        animation = _animation(data, max_pixels=10_000)
    except InvalidImageError:  # UnsupportedFormatError included
        return
    except ImageTooLargeError:  # TooManyFramesError included
        return
    if animation is not None:
        assert animation.frames
        assert len(animation.durations_ms) == len(animation.frames)
        assert all(frame.shape == animation.frames[0].shape for frame in animation.frames)
