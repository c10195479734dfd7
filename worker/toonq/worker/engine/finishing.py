"""Sticker finishing of cut-outs: a white outline, a drop shadow and a crop to the subject.

It works on the RGBA frames (straight alpha) that matting produced. Every frame of an animation
gets the same geometry (one crop box, one shadow offset), computed from the union of the frames'
subjects, so the frames stay aligned. The subject is every pixel with alpha above 0.

Bottom to top, composited with "over": the shadow (black), the outline (white), the subject.

* outline N: the subject's alpha dilated by a disc of radius N (the maximum alpha within N px),
  averaged with its dilation by a disc of radius N + 1: opaque out to N px from the subject and
  half-transparent in the ring from N to N + 1 px, which softens the disc's staircase. A soft matte
  edge carries over to the stroke's outer edge.
* shadow: the subject with its outline, moved down and right, blurred (Pillow's Gaussian blur),
  in black at half opacity. Its offset and blur scale with the subject's longer side.
* trim: the canvas becomes the subject's box grown by the outline's and the shadow's reach, plus
  `margin` px on each side; it grows past the image with transparent pixels where it must, so
  nothing drawn is clipped. Without trim the canvas keeps the image's size, and what is drawn
  beyond it is clipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

Frame = npt.NDArray[np.uint8]

#: The shadow's offset down and to the right, as a fraction of the subject's longer side.
SHADOW_OFFSET_RATIO: Final = 0.025
#: The radius (standard deviation) of the shadow's blur, as a fraction of the subject's longer
#: side.
SHADOW_BLUR_RATIO: Final = 0.01
#: The shadow's alpha where it is fully covered (0..1).
SHADOW_OPACITY: Final = 0.5


def apply_finishing(
    frames: Sequence[Frame],
    *,
    trim: bool = False,
    margin: int = 0,
    outline: int = 0,
    shadow: bool = False,
) -> list[Frame]:
    """The frames (H×W×4 uint8, straight alpha, all one size) finished as stickers.

    `outline` is the white stroke's width in px (0: none), `shadow` adds a drop shadow, and
    `trim` crops every frame to the union of the subjects' boxes grown by the stroke's and the
    shadow's reach and by `margin` px (which only applies with trim). Returns new arrays and
    leaves the inputs untouched. With every option off, or when no frame has a pixel with alpha
    above 0 (nothing to outline, shade or crop to), returns the input frames themselves.
    Raises ValueError for a negative margin or outline, or frames that are not RGBA of one size.
    """
    if margin < 0 or outline < 0:
        raise ValueError(f"margin and outline must be >= 0, got {margin} and {outline}")
    _check_frames(frames)
    if not (trim or outline or shadow):
        return list(frames)
    subject = _subject_box(frames)
    if subject is None:
        return list(frames)
    stroke = _Stroke.of_width(outline) if outline else None
    drop = _Shadow.for_subject(subject) if shadow else None
    # Everything drawn lies in `region`: the subject's box grown by the decorations' reach.
    region = subject.grown(*_decoration_reach(stroke, drop))
    height, width = frames[0].shape[:2]
    image = _Box(0, 0, height, width)
    canvas = region.grown(margin, margin, margin, margin) if trim else image
    finished = []
    for frame in frames:
        result = _crop(frame, image, canvas)
        if stroke is not None or drop is not None:
            decorated = _decorate(_crop(frame, image, region), stroke, drop)
            _copy_overlap(result, canvas, decorated, region)
        finished.append(result)
    return finished


@dataclass(frozen=True)
class _Box:
    """A rectangle in the image's pixel coordinates, bottom and right exclusive; it may reach
    past the image."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def grown(self, top: int, left: int, bottom: int, right: int) -> _Box:
        return _Box(self.top - top, self.left - left, self.bottom + bottom, self.right + right)

    def intersection(self, other: _Box) -> _Box:
        return _Box(
            max(self.top, other.top),
            max(self.left, other.left),
            min(self.bottom, other.bottom),
            min(self.right, other.right),
        )

    def slices_within(self, outer: _Box) -> tuple[slice, slice]:
        """Where this box lies in an array that covers `outer`."""
        return (
            slice(self.top - outer.top, self.bottom - outer.top),
            slice(self.left - outer.left, self.right - outer.left),
        )


@dataclass(frozen=True)
class _Stroke:
    """The outline's dilation kernels: each disc as the half-widths of its rows, top to bottom."""

    width: int
    disc: tuple[int, ...]
    outer_disc: tuple[int, ...]

    @classmethod
    def of_width(cls, width: int) -> _Stroke:
        return cls(width, _disc_rows(width), _disc_rows(width + 1))

    @property
    def reach(self) -> int:
        """How far past the subject the stroke draws: its width and the anti-aliased ring."""
        return self.width + 1


@dataclass(frozen=True)
class _Shadow:
    offset: int
    blur_radius: int
    #: How far the blur spreads the shadow past its shape, in px.
    spread: int

    @classmethod
    def for_subject(cls, subject: _Box) -> _Shadow:
        side = max(subject.height, subject.width)
        blur_radius = max(1, round(SHADOW_BLUR_RATIO * side))
        return cls(
            offset=max(1, round(SHADOW_OFFSET_RATIO * side)),
            blur_radius=blur_radius,
            spread=_blur_spread(blur_radius),
        )


def _blur(alpha: Frame, radius: int) -> Frame:
    return np.asarray(Image.fromarray(alpha).filter(ImageFilter.GaussianBlur(radius)))


def _blur_spread(radius: int) -> int:
    """How many px past an edge of opaque pixels the blur leaves alpha above 0: no shape
    spreads further. Measured, as Pillow's Gaussian blur is three box blurs of radius below
    `radius` that round their faint tails to 0 short of their 3·radius reach."""
    reach = 3 * radius
    edge = np.zeros((1, 2 * reach + 2), dtype=np.uint8)
    edge[:, : reach + 1] = 255
    return int(np.count_nonzero(_blur(edge, radius)[:, reach + 1 :]))


def _check_frames(frames: Sequence[Frame]) -> None:
    for frame in frames:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 4:
            raise ValueError(f"expected uint8 H×W×4 frames, got {frame.dtype} of {frame.shape}")
        if frame.shape != frames[0].shape:
            raise ValueError(f"frames differ in size: {frame.shape} vs {frames[0].shape}")


def _subject_box(frames: Sequence[Frame]) -> _Box | None:
    """The box of the pixels with alpha above 0 in any frame; None when there is none."""
    if not frames:
        return None
    covered = np.zeros(frames[0].shape[:2], dtype=np.bool_)
    for frame in frames:
        covered |= frame[..., 3] > 0
    rows, columns = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    if rows.size == 0:
        return None
    return _Box(int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1)


def _decoration_reach(stroke: _Stroke | None, drop: _Shadow | None) -> tuple[int, int, int, int]:
    """How far past the subject's box (top, left, bottom, right) the decorations draw."""
    around = stroke.reach if stroke is not None else 0
    if drop is None:
        return around, around, around, around
    before = around + max(0, drop.spread - drop.offset)
    after = around + drop.offset + drop.spread
    return before, before, after, after


def _crop(frame: Frame, image: _Box, box: _Box) -> Frame:
    """The pixels of `frame` (which covers `image`) in `box`, transparent where it is not."""
    cropped = np.zeros((box.height, box.width, frame.shape[2]), dtype=np.uint8)
    _copy_overlap(cropped, box, frame, image)
    return cropped


def _copy_overlap(target: Frame, target_box: _Box, source: Frame, source_box: _Box) -> None:
    overlap = target_box.intersection(source_box)
    if overlap.height > 0 and overlap.width > 0:
        target[overlap.slices_within(target_box)] = source[overlap.slices_within(source_box)]


def _decorate(region: Frame, stroke: _Stroke | None, drop: _Shadow | None) -> Frame:
    """The subject in `region` over its outline over its shadow ("over", straight alpha)."""
    subject = region[..., 3]
    nothing = np.zeros_like(subject)
    white = _outline_alpha(subject, stroke) if stroke is not None else nothing
    # A dilation is never below what it dilates: the outline covers the subject, and the larger
    # of their alphas is the shape they cast together.
    black = _shadow_alpha(np.maximum(subject, white), drop) if drop is not None else nothing
    # Opaque subject pixels, and pixels with nothing under them, stay as they are: only the
    # rest is blended, in floats.
    blended = (subject < 255) & ((white | black) > 0)
    front = subject[blended] / np.float32(255)
    stroke_alpha = white[blended] / np.float32(255)
    shadow_alpha = black[blended] * np.float32(SHADOW_OPACITY / 255)
    under = stroke_alpha + shadow_alpha * (1 - stroke_alpha)
    alpha = front + under * (1 - front)
    # The black shadow adds alpha but no colour to the premultiplied sum.
    premultiplied = (
        region[blended, :3] * front[:, None] + (255 * stroke_alpha * (1 - front))[:, None]
    )
    decorated = region.copy()
    decorated[blended, :3] = np.clip(np.rint(premultiplied / alpha[:, None]), 0, 255)
    decorated[blended, 3] = np.rint(alpha * 255)
    return decorated


def _outline_alpha(alpha: Frame, stroke: _Stroke) -> Frame:
    """The stroke's alpha: the mean of `alpha`'s dilations by the two discs, rounded half up."""
    pad = stroke.reach
    row_maxima = _row_maxima(np.pad(alpha, pad), pad, set(stroke.disc) | set(stroke.outer_disc))
    inner = _dilate(row_maxima, stroke.disc, pad, alpha.shape[0])
    outer = _dilate(row_maxima, stroke.outer_disc, pad, alpha.shape[0])
    return ((inner.astype(np.uint16) + outer + 1) >> 1).astype(np.uint8)


def _disc_rows(radius: int) -> tuple[int, ...]:
    """The half-widths of the rows of the disc x² + y² ≤ radius², for y = -radius..radius."""
    return tuple(math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1))


def _row_maxima(padded: Frame, pad: int, reaches: set[int]) -> dict[int, Frame]:
    """For each reach q, the maximum over the 2q + 1 pixels of a row centred on each pixel of
    the unpadded columns (every padded row kept). `pad` must be at least the largest reach.

    A sparse table: level j holds the maxima of the runs of 2^j pixels, each level one
    `np.maximum` of the previous; any window is then the maximum of two overlapping runs, so
    every reach costs one more operation whatever its size.
    """
    width = padded.shape[1] - 2 * pad
    levels = [padded]
    while 2 ** len(levels) <= 2 * max(reaches) + 1:
        step = 2 ** (len(levels) - 1)
        levels.append(np.maximum(levels[-1][:, :-step], levels[-1][:, step:]))
    maxima = {}
    for reach in reaches:
        level = (2 * reach + 1).bit_length() - 1
        first = pad - reach  # the window's first column, for column 0
        second = pad + reach + 1 - 2**level  # the start of the run that ends the window
        runs = levels[level]
        maxima[reach] = np.maximum(runs[:, first : first + width], runs[:, second : second + width])
    return maxima


def _dilate(row_maxima: dict[int, Frame], disc: tuple[int, ...], pad: int, height: int) -> Frame:
    """The maximum over `disc` around each pixel: its rows' maxima, each moved to its row."""
    radius = len(disc) // 2
    dilated = np.zeros((height, next(iter(row_maxima.values())).shape[1]), dtype=np.uint8)
    for dy, reach in zip(range(-radius, radius + 1), disc, strict=True):
        np.maximum(dilated, row_maxima[reach][pad + dy : pad + dy + height], out=dilated)
    return dilated


def _shadow_alpha(casting: Frame, drop: _Shadow) -> Frame:
    """The shadow's shape: `casting` moved down and right and blurred (SHADOW_OPACITY is applied
    when blending). The region leaves room for the move and the blur, so nothing is lost at its
    edges."""
    moved = np.zeros_like(casting)
    moved[drop.offset :, drop.offset :] = casting[: -drop.offset, : -drop.offset]
    return _blur(moved, drop.blur_radius)
