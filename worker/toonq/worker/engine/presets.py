"""Platform presets: fit a cut-out, still or animated, to a sticker platform's limits.

Each preset's limits are data (`PRESET_LIMITS`). `fit_preset` meets them in three steps, and
says in `FittedOutput.changes` what each step changed:

1. timing: frames too short for the frame rate, or too many, are merged with their neighbours
   (durations added); too few are made by splitting the longest frames' durations. The total
   time is kept; an animation longer than the limit cannot be fitted.
2. size: scaled, aspect ratio kept, to the preset's box (filling it where a side must reach it).
3. bytes: a short ladder of encodings, each smaller and lossier than the one before, with a
   binary search where a setting is a range (palette size, WebP quality, VP9 crf); an
   animation that fits none loses frames, down to the preset's minimum.

A limit that cannot be met raises CannotFitPresetError naming the preset and the limit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from toonq.shared.choices import PRESET_FORMATS, OutputFormat, Preset
from toonq.shared.errors import CannotFitPresetError
from toonq.worker.engine.animated_encode import (
    check_animation,
    encode_apng,
    encode_webm,
    encode_webp_still,
    quantise,
)
from toonq.worker.engine.encode import encode_rgba_pixels

AnimationFormat = Literal["apng", "webm"]

#: A kilobyte as 1000 bytes: the stricter reading of a platform's "KB".
KB: Final = 1000


@dataclass(frozen=True)
class Limits:
    """What one kind of sticker (a preset's still, or its animation) may be."""

    #: The largest width and height.
    box: tuple[int, int]
    #: Scale up as well as down, to the largest size inside `box`: a side must reach it.
    fill_box: bool
    max_bytes: int | None
    max_seconds: float | None = None
    max_fps: int | None = None
    min_frames: int = 1
    max_frames: int | None = None
    #: The most plays of an animation, where the platform counts them (0, for ever, is more).
    max_plays: int | None = None


@dataclass(frozen=True)
class PresetLimits:
    """A platform's limits on stills and animations. The formats a still may be written in
    (the job's `format` picks one) are `toonq.shared.choices.PRESET_FORMATS`."""

    still: Limits
    animation_format: AnimationFormat
    animation: Limits


PRESET_LIMITS: Final[Mapping[Preset, PresetLimits]] = {
    # One side exactly 512 px, the other at most 512.
    "telegram": PresetLimits(
        still=Limits(box=(512, 512), fill_box=True, max_bytes=512 * KB),
        animation_format="webm",
        animation=Limits(
            box=(512, 512),
            fill_box=True,
            max_bytes=256 * KB,
            max_seconds=3,
            max_fps=30,
            min_frames=2,
        ),
    ),
    # An animation at most 320x270 with a side of at least 270: the largest size in the box.
    "line": PresetLimits(
        still=Limits(box=(370, 320), fill_box=False, max_bytes=None),
        animation_format="apng",
        animation=Limits(
            box=(320, 270),
            fill_box=True,
            max_bytes=300 * KB,
            max_seconds=4,
            min_frames=5,
            max_frames=20,
            max_plays=4,
        ),
    ),
    "discord": PresetLimits(
        still=Limits(box=(320, 320), fill_box=False, max_bytes=512 * KB),
        animation_format="apng",
        animation=Limits(box=(320, 320), fill_box=False, max_bytes=512 * KB, min_frames=2),
    ),
}

_CONTENT_TYPES: Final[Mapping[str, tuple[str, str]]] = {
    "png": ("image/png", "png"),
    "webp": ("image/webp", "webp"),
    "apng": ("image/png", "png"),
    "webm": ("video/webm", "webm"),
}

#: Palette sizes tried, fewest colours (smallest files) first. Below 64 colours an anime
#: cut-out's shading and anti-aliased edges band visibly: fewer frames are the better loss.
_PALETTE_COLOURS: Final = (64, 128, 256)
#: Lossy WebP qualities tried, lowest first.
_WEBP_QUALITIES: Final = tuple(range(10, 91, 10))
#: libwebp's default method for the lossy ladder: 5 and 6 are several times slower, and a still
#: is encoded a few times.
_WEBP_LOSSY_METHOD: Final = 4
#: VP9 crfs tried, from the smallest files to encode_webm's default quality. 63 is libvpx's
#: coarsest quantiser: an average bitrate below what it gives cannot be met either (measured
#: on noise: libvpx's VBR and CBR at such a bitrate write 4-6x more bytes than crf 63).
_VP9_CRFS: Final = (63, 58, 53, 48, 43, 38, 34)
_VP9_DEFAULT_CRF: Final = 30
_PNG_MAX_LEVEL: Final = 9
#: How many times an animation that fits no encoding is cut to fewer frames before giving up.
_FRAME_CUTS: Final = 4
#: Cut to a little under the frame count the bytes suggest (sizes do not scale exactly).
_FRAME_CUT_MARGIN: Final = 0.9


@dataclass(frozen=True)
class FittedOutput:
    """An output that meets its preset's limits, and what fitting changed to get there."""

    data: bytes
    content_type: str
    extension: str
    changes: tuple[str, ...]
    width: int
    height: int
    frames: int


#: A frame of the output: which input frame it shows, and for how many milliseconds.
Timeline = list[tuple[int, int]]


@dataclass(frozen=True)
class _Attempt:
    data: bytes
    changes: tuple[str, ...]


def fit_preset(
    frames: Sequence[npt.NDArray[np.uint8]],
    durations_ms: Sequence[int],
    loop: int,
    *,
    preset: Preset,
    fmt: OutputFormat,
    png_compress_level: int = 1,
) -> FittedOutput:
    """`frames` (H×W×4 uint8 RGBA, each shown for its duration, played `loop` times, 0 for
    ever) fitted to `preset`'s limits: one frame is a still written in `fmt`, more an
    animation in the preset's animation format. Raises CannotFitPresetError naming the limit
    that cannot be met, ValueError for a format the preset does not write."""
    if preset not in PRESET_LIMITS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESET_LIMITS)}")
    platform = PRESET_LIMITS[preset]
    if fmt not in PRESET_FORMATS[preset]:
        raise ValueError(f"{preset} stickers are written as {', '.join(PRESET_FORMATS[preset])}")
    check_animation(frames, durations_ms, loop)
    height, width = frames[0].shape[:2]
    still = len(frames) == 1
    limits = platform.still if still else platform.animation
    container: str = fmt if still else platform.animation_format
    changes: list[str] = []

    timeline = [(0, durations_ms[0])] if still else _fit_timing(durations_ms, limits, preset)
    if len(timeline) != len(frames):
        verb = "merged" if len(timeline) < len(frames) else "split"
        changes.append(
            f"frames {len(frames)} -> {len(timeline)} (durations {verb}, total time kept)"
        )
    if container == "webm" and loop != 0:
        changes.append(f"plays {loop} -> for ever (WebM stores no play count; Telegram loops)")
    if limits.max_plays is not None and not 1 <= loop <= limits.max_plays:
        asked = "for ever" if loop == 0 else str(loop)
        changes.append(f"plays {asked} -> {limits.max_plays} ({preset}'s most)")
        loop = limits.max_plays
    size = _fitted_size(width, height, limits, even=container == "webm")
    if size != (width, height):
        changes.append(f"scaled {width}x{height} -> {size[0]}x{size[1]}")
    scaled = _scaled_frames(frames, {index for index, _ in timeline}, size)

    source = _Source(scaled, loop, png_compress_level, limits)
    attempt, timeline, cuts = _fit_bytes(_LADDERS[container], source, timeline, preset)
    content_type, extension = _CONTENT_TYPES[container]
    return FittedOutput(
        data=attempt.data,
        content_type=content_type,
        extension=extension,
        changes=(*changes, *cuts, *attempt.changes),
        width=size[0],
        height=size[1],
        frames=len(timeline),
    )


# --- timing ------------------------------------------------------------------------------------


def _fit_timing(durations_ms: Sequence[int], limits: Limits, preset: Preset) -> Timeline:
    """The frames of an animation retimed to `limits`' frame count and rate, total time kept."""
    total = sum(durations_ms)
    if limits.max_seconds is not None and total > limits.max_seconds * 1000:
        raise CannotFitPresetError(
            f"{preset}: an animated sticker is at most {limits.max_seconds:g} s; this "
            f"animation runs {total / 1000:.2f} s"
        )
    # A frame of 0 ms is never seen: it joins a neighbour. A frame of 33 ms counts as 30 fps,
    # as players round it; the average must not exceed the rate either.
    shortest_ms = 1 if limits.max_fps is None else math.floor(1000 / limits.max_fps)
    if total < limits.min_frames * shortest_ms:
        raise CannotFitPresetError(
            f"{preset}: an animated sticker has at least {limits.min_frames} frames of "
            f"{shortest_ms} ms or more; this animation runs {total} ms"
        )
    timeline = _merge_shorter_than(list(enumerate(durations_ms)), shortest_ms)
    if limits.max_fps is not None:
        timeline = _merge_to_count(timeline, math.floor(total * limits.max_fps / 1000))
    if limits.max_frames is not None:
        timeline = _merge_to_count(timeline, limits.max_frames)
    return _split_to_count(timeline, limits.min_frames)


def _merge_shorter_than(timeline: Timeline, min_ms: int) -> Timeline:
    """Runs of consecutive frames merged until each lasts at least `min_ms` (a short last run
    joining the one before it)."""
    runs: list[Timeline] = []
    for frame in timeline:
        if runs and _total(runs[-1]) < min_ms:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    if len(runs) > 1 and _total(runs[-1]) < min_ms:
        runs[-2].extend(runs.pop())
    return [_merged(run) for run in runs]


def _merge_to_count(timeline: Timeline, count: int) -> Timeline:
    """At most `count` frames: runs of consecutive frames, as even in number as can be,
    merged."""
    if len(timeline) <= count:
        return timeline
    bounds = np.array_split(np.arange(len(timeline)), count)
    return [_merged(timeline[run[0] : run[-1] + 1]) for run in bounds]


def _merged(run: Timeline) -> tuple[int, int]:
    """One frame for a run of frames: the one shown longest (the first of those), for the
    run's total time."""
    index, _ = max(run, key=lambda frame: frame[1])
    return index, _total(run)


def _total(run: Timeline) -> int:
    return sum(duration for _, duration in run)


def _split_to_count(timeline: Timeline, count: int) -> Timeline:
    """At least `count` frames: the longest frame split in two halves of its time, until
    there are."""
    split = list(timeline)
    while len(split) < count:
        longest = max(range(len(split)), key=lambda position: split[position][1])
        index, duration = split[longest]
        split[longest : longest + 1] = [(index, duration // 2), (index, duration - duration // 2)]
    return split


# --- size --------------------------------------------------------------------------------------


def _fitted_size(width: int, height: int, limits: Limits, *, even: bool) -> tuple[int, int]:
    """The size `limits` allow with the aspect ratio of `width`x`height` (even sides where the
    format needs them)."""
    box_width, box_height = limits.box
    scale = min(box_width / width, box_height / height)
    if not limits.fill_box:
        scale = min(scale, 1.0)
    fitted = [
        max(1, min(side_limit, round(side * scale)))
        for side, side_limit in ((width, box_width), (height, box_height))
    ]
    if even:
        fitted = [max(2, side - side % 2) for side in fitted]
    return fitted[0], fitted[1]


def _scaled_frames(
    frames: Sequence[npt.NDArray[np.uint8]], used: set[int], size: tuple[int, int]
) -> dict[int, npt.NDArray[np.uint8]]:
    """The frames in `used` at `size`. Pillow resizes RGBA premultiplied, so the colours of
    transparent pixels do not bleed into the edges as dark fringes."""
    height, width = frames[0].shape[:2]
    if size == (width, height):
        return {index: frames[index] for index in used}
    return {
        index: np.asarray(Image.fromarray(frames[index]).resize(size, Image.Resampling.LANCZOS))
        for index in used
    }


# --- bytes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """What every encoding of one output starts from: its frames, scaled, by input index."""

    frames: Mapping[int, npt.NDArray[np.uint8]]
    loop: int
    png_compress_level: int
    limits: Limits

    def shown(self, timeline: Timeline) -> tuple[list[npt.NDArray[np.uint8]], list[int]]:
        """The frames `timeline` shows, in order, and their durations."""
        return [self.frames[index] for index, _ in timeline], [ms for _, ms in timeline]


@dataclass(frozen=True)
class _Step:
    """One rung of an encoding ladder: an encoder over settings ordered from the smallest
    files to the best quality, of which a binary search finds the best that fits."""

    settings: Sequence[int]
    encode: Callable[[int], bytes]
    describe: Callable[[int], tuple[str, ...]]


#: The encoding ladder of a format, for a timeline: its rungs, best quality first.
Ladder = Callable[[_Source, Timeline], list[_Step]]


def _fit_bytes(
    ladder: Ladder, source: _Source, timeline: Timeline, preset: Preset
) -> tuple[_Attempt, Timeline, list[str]]:
    """The best encoding under the byte limit, cutting an animation to fewer frames (down to
    the limits' minimum) where none is: the encoding, its timeline and the cuts made."""
    max_bytes = source.limits.max_bytes
    cuts: list[str] = []
    while True:
        rungs = ladder(source, timeline)
        # After a cut, only the last rung: the cut was sized on its smallest encoding, and
        # the rungs above it did not fit even before.
        attempt, smallest = _best_fitting(rungs[-1:] if cuts else rungs, max_bytes)
        if attempt is not None:
            return attempt, timeline, cuts
        assert max_bytes is not None  # without a byte limit the first encoding fits
        # Bytes grow about linearly with frames: aim a little under the count they suggest.
        fewer = math.floor(len(timeline) * max_bytes / len(smallest.data) * _FRAME_CUT_MARGIN)
        fewer = max(source.limits.min_frames, min(fewer, len(timeline) - 1))
        if len(timeline) == 1 or fewer >= len(timeline) or len(cuts) == _FRAME_CUTS:
            frames = (f"{len(timeline)} frames",) if len(timeline) > 1 else ()
            tried = ", ".join((*smallest.changes, *frames))
            raise CannotFitPresetError(
                f"{preset}: cannot get under {max_bytes // KB} KB; the smallest encoding "
                f"({tried}) is {len(smallest.data) / KB:.0f} KB"
            )
        cuts.append(f"frames {len(timeline)} -> {fewer} (to fit {max_bytes // KB} KB)")
        timeline = _merge_to_count(timeline, fewer)


def _best_fitting(
    ladder: Sequence[_Step], max_bytes: int | None
) -> tuple[_Attempt | None, _Attempt]:
    """The first rung's best encoding under `max_bytes`, or None and the smallest encoding
    tried where no rung has one.

    Each rung's smallest setting is tried first: where even that does not fit, none of the
    rung will, at the cost of one encoding rather than a whole search.
    """
    tried: list[_Attempt] = []

    def fits(setting: int, step: _Step) -> _Attempt | None:
        attempt = _Attempt(step.encode(setting), step.describe(setting))
        tried.append(attempt)
        return attempt if max_bytes is None or len(attempt.data) <= max_bytes else None

    for step in ladder:
        best = fits(step.settings[0], step)
        if best is None:
            continue
        low, high = 1, len(step.settings) - 1
        while low <= high:
            middle = (low + high) // 2
            attempt = fits(step.settings[middle], step)
            if attempt is None:
                high = middle - 1
            else:
                best, low = attempt, middle + 1
        return best, best
    return None, min(tried, key=lambda attempt: len(attempt.data))


def _no_change(_: int) -> tuple[str, ...]:
    return ()


def _describe_palette(colours: int) -> tuple[str, ...]:
    return (f"palette of {colours} colours",)


def _png_level_rungs(encode: Callable[[int], bytes], level: int) -> list[_Step]:
    """The caller's PNG compression level, then the highest where that is lower."""
    rungs = [_Step((level,), encode, _no_change)]
    if level < _PNG_MAX_LEVEL:
        rungs.append(
            _Step((_PNG_MAX_LEVEL,), encode, lambda best: (f"png compression level {best}",))
        )
    return rungs


def _png_ladder(source: _Source, timeline: Timeline) -> list[_Step]:
    pixels = source.frames[timeline[0][0]]

    def encode_palette(colours: int) -> bytes:
        buffer = io.BytesIO()
        quantise([pixels], colours)[0].save(buffer, format="PNG", compress_level=_PNG_MAX_LEVEL)
        return buffer.getvalue()

    return [
        *_png_level_rungs(
            lambda level: encode_rgba_pixels(pixels, fmt="png", png_compress_level=level),
            source.png_compress_level,
        ),
        _Step(_PALETTE_COLOURS, encode_palette, _describe_palette),
    ]


def _webp_ladder(source: _Source, timeline: Timeline) -> list[_Step]:
    pixels = source.frames[timeline[0][0]]
    return [
        _Step((0,), lambda _: encode_rgba_pixels(pixels, fmt="webp"), _no_change),
        _Step(
            _WEBP_QUALITIES,
            lambda quality: encode_webp_still(
                pixels, lossless=False, quality=quality, method=_WEBP_LOSSY_METHOD
            ),
            lambda quality: (f"webp quality {quality}",),
        ),
    ]


def _apng_ladder(source: _Source, timeline: Timeline) -> list[_Step]:
    frames, durations = source.shown(timeline)
    return [
        *_png_level_rungs(
            lambda level: encode_apng(frames, durations, source.loop, compress_level=level),
            source.png_compress_level,
        ),
        _Step(
            _PALETTE_COLOURS,
            lambda colours: encode_apng(
                frames, durations, source.loop, compress_level=_PNG_MAX_LEVEL, colours=colours
            ),
            _describe_palette,
        ),
    ]


def _webm_ladder(source: _Source, timeline: Timeline) -> list[_Step]:
    frames, durations = source.shown(timeline)

    def encode_at_crf(crf: int) -> bytes:
        return encode_webm(frames, durations, crf=crf)

    return [
        _Step((_VP9_DEFAULT_CRF,), encode_at_crf, _no_change),
        _Step(_VP9_CRFS, encode_at_crf, lambda crf: (f"vp9 crf {crf}",)),
    ]


_LADDERS: Final[Mapping[str, Ladder]] = {
    "png": _png_ladder,
    "webp": _webp_ladder,
    "apng": _apng_ladder,
    "webm": _webm_ladder,
}
