"""fit_preset: the files written for each platform preset meet every one of its limits, read
back with Pillow and PyAV; what fitting changed is said; a limit that cannot be met is named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.unit.test_animated_encode import read_webm, read_with_pillow
from toonq.shared.errors import CannotFitPresetError
from toonq.worker.engine.presets import KB, PRESET_LIMITS, FittedOutput, fit_preset


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Opaque RGB noise: it hardly compresses, so byte limits bite."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


def _character(height: int, width: int, step: int = 0) -> np.ndarray:
    """A flat-coloured disc with an outline on a transparent background, moved by `step`
    pixels: a cut-out that compresses like a drawn one."""
    rows, columns = np.mgrid[0:height, 0:width]
    distance = np.hypot(columns - width / 3 - step, rows - height / 2)
    radius = min(height, width) / 3
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[distance < radius] = (250, 200, 160, 255)
    pixels[(distance >= radius - 4) & (distance < radius)] = (40, 20, 20, 255)
    return pixels


def _animation(count: int, height: int, width: int) -> list[np.ndarray]:
    return [_character(height, width, step=3 * index) for index in range(count)]


def _check_png_still(output: FittedOutput) -> Image.Image:
    image = Image.open(io.BytesIO(output.data))
    assert image.format == "PNG"
    assert getattr(image, "n_frames", 1) == 1
    assert (output.content_type, output.extension) == ("image/png", "png")
    return image


# --- stills ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "content_type"), [("png", "image/png"), ("webp", "image/webp")])
@pytest.mark.parametrize(
    ("size", "expected"), [((1024, 768), (512, 384)), ((300, 400), (384, 512))]
)
def test_telegram_still_has_one_side_of_512_in_the_jobs_format(fmt, content_type, size, expected):
    output = fit_preset([_character(size[1], size[0])], [0 + 1], 0, preset="telegram", fmt=fmt)
    image = Image.open(io.BytesIO(output.data))
    assert image.format == fmt.upper()
    assert image.size == expected == (output.width, output.height)
    assert (output.content_type, output.extension, output.frames) == (content_type, fmt, 1)
    assert len(output.data) <= 512 * KB
    assert output.changes == (f"scaled {size[0]}x{size[1]} -> {expected[0]}x{expected[1]}",)


def test_telegram_noise_still_in_webp_turns_lossy_to_fit_512_kb():
    output = fit_preset([_noise(768, 1024)], [100], 0, preset="telegram", fmt="webp")
    image = Image.open(io.BytesIO(output.data))
    assert image.format == "WEBP"
    assert image.size == (512, 384)
    assert len(output.data) <= 512 * KB
    assert output.changes[0] == "scaled 1024x768 -> 512x384"
    assert output.changes[-1].startswith("webp quality ")


def test_telegram_noise_still_in_png_is_compressed_harder_or_quantised_to_fit():
    output = fit_preset([_noise(600, 600)], [100], 0, preset="telegram", fmt="png")
    image = _check_png_still(output)
    assert image.size == (512, 512)
    assert len(output.data) <= 512 * KB
    assert output.changes[-1].startswith(("png compression level 9", "palette of "))
    if output.changes[-1].startswith("palette of "):
        colours = int(output.changes[-1].split()[2])
        assert image.mode == "P"
        assert len(image.getpalette("RGBA") or []) // 4 <= colours


@pytest.mark.parametrize(
    ("preset", "size", "expected"),
    [
        ("line", (1024, 768), (370, 278)),
        ("line", (600, 600), (320, 320)),
        ("discord", (1024, 768), (320, 240)),
        ("discord", (600, 600), (320, 320)),
    ],
)
def test_line_and_discord_stills_are_pngs_scaled_down_into_their_box(preset, size, expected):
    output = fit_preset([_noise(size[1], size[0])], [100], 0, preset=preset, fmt="png")
    image = _check_png_still(output)
    assert image.size == expected == (output.width, output.height)
    limits = PRESET_LIMITS[preset].still
    assert image.width <= limits.box[0]
    assert image.height <= limits.box[1]
    assert limits.max_bytes is None or len(output.data) <= limits.max_bytes
    assert output.changes[0] == f"scaled {size[0]}x{size[1]} -> {expected[0]}x{expected[1]}"


def test_a_still_inside_the_box_is_written_as_given():
    pixels = _character(100, 200)
    output = fit_preset([pixels], [100], 0, preset="discord", fmt="png")
    assert output.changes == ()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(output.data))), pixels)


def test_scaling_leaves_no_dark_fringe_around_the_cut_out():
    rows, columns = np.mgrid[0:600, 0:600]
    pixels = np.zeros((600, 600, 4), dtype=np.uint8)  # black under the transparent background
    pixels[np.hypot(rows - 300, columns - 300) < 200] = (250, 200, 160, 255)
    output = fit_preset([pixels], [100], 0, preset="discord", fmt="png")
    scaled = np.asarray(Image.open(io.BytesIO(output.data)).convert("RGBA"))
    edge = (scaled[..., 3] >= 32) & (scaled[..., 3] < 255)
    assert edge.any()
    # Edge pixels are the disc's colour, more or less opaque, not darkened by the black behind.
    assert scaled[edge][:, 0].min() >= 230


@pytest.mark.parametrize("preset", ["line", "discord"])
def test_line_and_discord_refuse_webp(preset):
    with pytest.raises(ValueError, match="png"):
        fit_preset([_character(10, 10)], [100], 0, preset=preset, fmt="webp")


# --- animations --------------------------------------------------------------------------------


def test_telegram_animation_is_a_vp9_webm_meeting_every_limit():
    frames = _animation(48, 300, 300)
    output = fit_preset(frames, [20] * 48, 0, preset="telegram", fmt="png")
    assert (output.content_type, output.extension) == ("video/webm", "webm")
    video = read_webm(output.data)
    assert video.codec == "vp9"
    assert video.audio_streams == 0
    assert video.size == (512, 512) == (output.width, output.height)
    assert len(output.data) <= 256 * KB
    assert len(video.frames) == output.frames == 24
    assert sum(video.durations_ms) == 48 * 20  # total time kept
    assert min(video.durations_ms) >= 33  # 30 fps at most
    assert len(video.frames) / (sum(video.durations_ms) / 1000) <= 30
    assert video.alpha_mode == "1"
    assert video.frames[0][..., 3].min() < 16  # the transparent background survives
    assert output.changes == (
        "frames 48 -> 24 (durations merged, total time kept)",
        "scaled 300x300 -> 512x512",
    )


def test_telegram_animation_keeps_an_allowed_frame_rate_and_sides():
    frames = _animation(10, 383, 600)
    output = fit_preset(frames, [100] * 10, 1, preset="telegram", fmt="webp")
    video = read_webm(output.data)
    assert video.size == (512, 326)  # 326.8 rounded down to even, as 4:2:0 needs
    assert video.durations_ms == [100] * 10
    assert output.changes == (
        "plays 1 -> for ever (WebM stores no play count; Telegram loops)",
        "scaled 600x383 -> 512x326",
    )


def test_telegram_refuses_an_animation_longer_than_3_s():
    with pytest.raises(CannotFitPresetError, match=r"telegram: .* at most 3 s; .* runs 5.00 s"):
        fit_preset(_animation(5, 64, 64), [1000] * 5, 0, preset="telegram", fmt="png")


def test_line_animation_merges_frames_down_to_20_and_fills_320x270():
    frames = _animation(48, 600, 600)
    output = fit_preset(frames, [40] * 48, 2, preset="line", fmt="png")
    animation = read_with_pillow(output.data)
    assert animation.format == "PNG"
    assert (output.content_type, output.extension) == ("image/png", "png")
    assert animation.size == (270, 270) == (output.width, output.height)
    assert len(animation.frames) == output.frames == 20
    assert sum(animation.durations) == 48 * 40 <= 4000
    assert animation.loop == 2
    assert len(output.data) <= 300 * KB
    assert output.changes == (
        "frames 48 -> 20 (durations merged, total time kept)",
        "scaled 600x600 -> 270x270",
    )


def test_line_animation_wider_than_tall_fills_the_width():
    output = fit_preset(_animation(6, 300, 1000), [100] * 6, 0, preset="line", fmt="png")
    animation = read_with_pillow(output.data)
    assert animation.size == (320, 96)  # at most 320x270, a side of 270 or more


def test_line_animation_of_too_few_frames_splits_the_longest():
    frames = _animation(3, 270, 320)
    output = fit_preset(frames, [300, 900, 300], 1, preset="line", fmt="png")
    animation = read_with_pillow(output.data)
    assert animation.durations == [300, 225, 225, 450, 300]
    assert output.changes == ("frames 3 -> 5 (durations split, total time kept)",)
    assert np.array_equal(animation.frames[1], animation.frames[3])


def test_telegram_refuses_an_animation_too_short_for_two_frames_at_30_fps():
    with pytest.raises(CannotFitPresetError, match=r"telegram: .* 2 frames of 33 ms or more"):
        fit_preset(_animation(3, 64, 64), [20] * 3, 0, preset="telegram", fmt="png")


def test_line_refuses_an_animation_longer_than_4_s():
    with pytest.raises(CannotFitPresetError, match=r"line: .* at most 4 s; .* runs 4.20 s"):
        fit_preset(_animation(6, 64, 64), [700] * 6, 0, preset="line", fmt="png")


def test_line_cannot_get_noise_under_300_kb():
    frames = [_noise(270, 320, seed) for seed in range(20)]
    with pytest.raises(CannotFitPresetError, match=r"line: cannot get under 300 KB") as caught:
        fit_preset(frames, [100] * 20, 0, preset="line", fmt="png")
    assert "5 frames" in caught.value.message  # it tried down to line's minimum
    assert caught.value.code == "cannot_fit_preset"


def test_discord_noise_animation_loses_colours_then_frames_to_fit_512_kb():
    frames = [_noise(160, 160, seed) for seed in range(30)]
    frames = [np.asarray(Image.fromarray(frame).resize((320, 320))) for frame in frames]
    output = fit_preset(frames, [50] * 30, 0, preset="discord", fmt="png")
    animation = read_with_pillow(output.data)
    assert animation.size == (320, 320)
    assert len(output.data) <= 512 * KB
    assert sum(animation.durations) == 30 * 50  # total time kept
    assert len(animation.frames) == output.frames < 30
    assert any(change.startswith("palette of ") for change in output.changes)
    assert f"frames 30 -> {output.frames} (to fit 512 KB)" in output.changes


def test_frames_of_0_ms_join_a_neighbour_which_is_shown_for_their_time():
    frames = _animation(4, 50, 60)
    output = fit_preset(frames, [0, 100, 0, 80], 0, preset="discord", fmt="png")
    animation = read_with_pillow(output.data)
    assert animation.durations == [100, 80]
    assert np.array_equal(animation.frames[0], frames[1])
    assert np.array_equal(animation.frames[1], frames[3])
    assert output.changes == ("frames 4 -> 2 (durations merged, total time kept)",)


def test_discord_animation_inside_the_box_is_kept_as_given():
    frames = _animation(8, 100, 120)
    output = fit_preset(frames, [80] * 8, 0, preset="discord", fmt="png")
    animation = read_with_pillow(output.data)
    assert output.changes == ()
    assert animation.durations == [80] * 8
    for read, given in zip(animation.frames, frames, strict=True):
        assert np.array_equal(read, given)


@pytest.mark.parametrize(("loop", "asked"), [(0, "for ever"), (9, "9")])
def test_line_plays_an_animation_at_most_4_times(loop, asked):
    output = fit_preset(_animation(6, 270, 320), [100] * 6, loop, preset="line", fmt="png")

    assert read_with_pillow(output.data).loop == 4
    assert f"plays {asked} -> 4 (line's most)" in output.changes
