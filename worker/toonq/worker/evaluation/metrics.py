"""Mask quality metrics, in pure NumPy: ToonOut's Pixel Accuracy, IoU, MAE, boundary F and halo.

Masks are uint8 H×W arrays (0 = background, 255 = foreground). A prediction is first resized to
its ground truth's size exactly as ToonOut's evaluation does (`resize_linear`), then every metric
compares the two pixel for pixel. A metric that is undefined for an image (e.g. Pixel Accuracy
for a ground truth without foreground) is `None`, never NaN.

Two definitions are shared by several metrics:

* foreground: a pixel whose value is above `FOREGROUND_THRESHOLD` (128), ToonOut's `gt > 128`;
* edge (`edge_map`): the foreground pixels with at least one 4-neighbour (up, down, left, right)
  in the background. The image frame is not an edge: beyond the border counts as foreground, so
  an object cut by the frame has no edge along it.

`flicker_score` rates an animation's mattes rather than one mask: how much alpha moves from frame
to frame where the input frames did not change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from toonq.worker.engine.temporal import check_mattes, static_pixels

Mask = npt.NDArray[np.uint8]
BoolMap = npt.NDArray[np.bool_]

#: Foreground is a value above this (ToonOut's `gt > 128`).
FOREGROUND_THRESHOLD: Final = 128
#: Pixel Accuracy: a pixel is wrong where |pred - gt| exceeds this many grey levels.
PA_TOLERANCE: Final = 10
#: Pixel Accuracy: wrong pixels survive only inside a fully wrong square of this side.
PA_EROSION_SIZE: Final = 5
#: Boundary F: edges match within this fraction of the image diagonal (the DAVIS convention).
BOUNDARY_TOLERANCE_RATIO: Final = 0.008
#: Halo: depth, in pixels, of the band inside the alpha edge.
HALO_BAND_DEPTH: Final = 3
#: Halo: a band pixel is bright when its luminance on black is above this (0..1).
HALO_LUMINANCE: Final = 0.85
#: Rec. 709 luma weights, applied to the 8-bit (gamma-encoded) R, G, B values.
_LUMA_WEIGHTS: Final = (0.2126, 0.7152, 0.0722)
#: cv2's bilinear resize of 8-bit images works in fixed point with 11-bit weights.
_WEIGHT_ONE: Final = 1 << 11


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is named and read in reports."""

    name: str
    title: str
    higher_is_better: bool


#: Every per-image metric, in report order; `name` is the key in JSON and `ImageScores`.
METRICS: Final = (
    MetricInfo("pixel_accuracy", "Pixel accuracy", higher_is_better=True),
    MetricInfo("iou", "IoU", higher_is_better=True),
    MetricInfo("mae", "MAE", higher_is_better=False),
    MetricInfo("boundary_f", "Boundary F", higher_is_better=True),
    MetricInfo("halo", "Halo", higher_is_better=False),
    MetricInfo("flicker", "Flicker", higher_is_better=False),
)


@dataclass(frozen=True)
class ImageScores:
    """One prediction's scores; None where the metric is undefined for the image."""

    pixel_accuracy: float | None
    iou: float | None
    mae: float
    boundary_f: float | None
    halo: float | None
    #: `flicker_score` of an animated input's predicted mattes; None for a still.
    flicker: float | None
    #: Whether Pixel Accuracy ranks this mask: its score before squaring is not negative, so
    #: a higher Pixel Accuracy means fewer wrong pixels. None where Pixel Accuracy is.
    pixel_accuracy_ranks: bool | None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def mean_score(values: Iterable[float | None]) -> float | None:
    """The mean of the defined values (None ones left out); None when none is defined."""
    defined = [value for value in values if value is not None]
    return math.fsum(defined) / len(defined) if defined else None


def mean_over_frames(frames: Sequence[ImageScores]) -> ImageScores:
    """An animation's scores from those of its frames: each metric's mean over the frames where
    it is defined (`mean_score`). Pixel Accuracy ranks the animation where it ranks every frame
    that has it. Flicker, which no single frame has, is None."""
    if not frames:
        raise ValueError("an animation has at least one frame")
    means = {
        metric.name: mean_score(getattr(frame, metric.name) for frame in frames)
        for metric in METRICS
    }
    ranks = [frame.pixel_accuracy_ranks for frame in frames]
    return ImageScores(
        pixel_accuracy=means["pixel_accuracy"],
        iou=means["iou"],
        mae=math.fsum(frame.mae for frame in frames) / len(frames),
        boundary_f=means["boundary_f"],
        halo=means["halo"],
        flicker=None,
        pixel_accuracy_ranks=None if all(r is None for r in ranks) else False not in ranks,
    )


def score_image(pred: Mask, gt: Mask, rgb: npt.NDArray[np.uint8] | None = None) -> ImageScores:
    """Every metric of one mask. `pred` is resized to `gt`'s size first; `rgb` (H×W×3, the size
    of `gt`) is the input image whose cut-out the halo inspects: without it, halo is None.
    Flicker, a score of an animation's masks, is None."""
    pred = resize_linear(pred, (gt.shape[0], gt.shape[1]))
    score = pixel_accuracy_score(pred, gt)
    return ImageScores(
        pixel_accuracy=None if score is None else score * score,
        iou=iou(pred, gt),
        mae=mae(pred, gt),
        boundary_f=boundary_f_measure(pred, gt),
        halo=None if rgb is None else halo(rgb, pred),
        flicker=None,
        pixel_accuracy_ranks=None if score is None else score >= 0,
    )


def resize_linear(mask: Mask, size: tuple[int, int]) -> Mask:
    """Resize a uint8 mask to `size` = (height, width) exactly like
    `cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)` on x86 and ARM builds.

    Bilinear with half-pixel centres and no antialias. Columns past the border take the edge
    pixel; rows past it clamp their source rows but keep their weights, as cv2 does. The
    arithmetic is cv2's: positions in float32, 11-bit integer weights, a horizontal pass in
    integers, then its vectorised vertical pass (drop 4 bits, keep the high 16 bits of each
    product, add 2, shift by 2). The same size returns `mask` itself.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"the target size must be positive, got {size}")
    if mask.shape == (height, width):
        return mask
    x0, x1, x_weights = _source_columns(mask.shape[1], width)
    y0, y1, y_weights = _source_rows(mask.shape[0], height)
    source = mask.astype(np.int32)
    rows = source[:, x0] * x_weights[0] + source[:, x1] * x_weights[1]
    top = ((rows[y0] >> 4) * y_weights[0][:, np.newaxis]) >> 16
    bottom = ((rows[y1] >> 4) * y_weights[1][:, np.newaxis]) >> 16
    return ((top + bottom + 2) >> 2).clip(0, 255).astype(np.uint8)


def pixel_accuracy(pred: Mask, gt: Mask) -> float | None:
    """ToonOut's Pixel Accuracy, as its evaluation computes it:

    1. wrong = |pred - gt| > 10, in int16 (a tolerance of 10 grey levels);
    2. wrong is eroded once by a 5×5 square, the border not eroding: a wrong pixel survives only
       if its whole 5×5 neighbourhood is wrong, so isolated or thin (< 5 px) errors are ignored,
       while a pixel by the image border needs only its in-image neighbours wrong;
    3. score = 1 - count(wrong) / count(gt > 128), over the ground truth's foreground pixels;
    4. PA = score².

    None when the ground truth has no foreground pixel. The score is negative when more pixels
    are wrong than the foreground has, and squaring it then gives a PA that grows with the
    error (above 1 past twice the foreground); this is kept, to match the published figures.
    """
    score = pixel_accuracy_score(pred, gt)
    return None if score is None else score * score


def pixel_accuracy_score(pred: Mask, gt: Mask) -> float | None:
    """Pixel Accuracy before squaring (steps 1 to 3 of `pixel_accuracy`): 1 at best, falling
    with every wrong pixel, negative past as many wrong pixels as the foreground has."""
    _require_same_shape(pred, gt)
    foreground = _count(gt > FOREGROUND_THRESHOLD)
    if foreground == 0:
        return None
    wrong = np.abs(pred.astype(np.int16) - gt.astype(np.int16)) > PA_TOLERANCE
    surviving = _erode_square(wrong, PA_EROSION_SIZE)
    return 1.0 - _count(surviving) / foreground


def iou(pred: Mask, gt: Mask) -> float | None:
    """Intersection over union of the foregrounds (> 128); None when both are empty."""
    _require_same_shape(pred, gt)
    pred_fg, gt_fg = pred > FOREGROUND_THRESHOLD, gt > FOREGROUND_THRESHOLD
    union = _count(pred_fg | gt_fg)
    if union == 0:
        return None
    return _count(pred_fg & gt_fg) / union


def mae(pred: Mask, gt: Mask) -> float:
    """Mean absolute difference of the soft masks, on a 0..1 scale (grey levels / 255)."""
    _require_same_shape(pred, gt)
    return float(np.mean(np.abs(pred.astype(np.int16) - gt.astype(np.int16)))) / 255.0


def boundary_f_measure(pred: Mask, gt: Mask, tolerance: int | None = None) -> float | None:
    """F-measure of the foreground edges (see the module docstring), as in the DAVIS benchmark.

    Precision is the fraction of the prediction's edge pixels within `tolerance` pixels
    (Euclidean) of a ground-truth edge pixel; recall, the fraction of ground-truth edge pixels
    within `tolerance` of a predicted one; F = 2PR / (P + R). The default tolerance is
    `boundary_tolerance(gt.shape)`. None when neither mask has an edge; 0.0 when only one has.
    """
    _require_same_shape(pred, gt)
    radius = boundary_tolerance(gt.shape) if tolerance is None else tolerance
    pred_edge = edge_map(pred > FOREGROUND_THRESHOLD)
    gt_edge = edge_map(gt > FOREGROUND_THRESHOLD)
    pred_count, gt_count = _count(pred_edge), _count(gt_edge)
    if pred_count == 0 and gt_count == 0:
        return None
    if pred_count == 0 or gt_count == 0:
        return 0.0
    precision = _count(pred_edge & _dilate_disk(gt_edge, radius)) / pred_count
    recall = _count(gt_edge & _dilate_disk(pred_edge, radius)) / gt_count
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def boundary_tolerance(shape: tuple[int, ...]) -> int:
    """Edge-matching tolerance in pixels: ceil(0.008 × diagonal), at least 1 (12 px at 1024²)."""
    return max(1, math.ceil(BOUNDARY_TOLERANCE_RATIO * math.hypot(shape[0], shape[1])))


def halo(rgb: npt.NDArray[np.uint8], alpha: Mask) -> float | None:
    """Bright fringe along the cut-out's edge: bright band pixels per edge pixel.

    The cut-out is `rgb` (H×W×3, uint8) with `alpha` (H×W) as its alpha, composited on black:
    each pixel's luminance is its Rec. 709 luma (0.2126 R + 0.7152 G + 0.0722 B, on the 8-bit
    values / 255) times alpha / 255.

    * edge: the edge of the alpha's foreground (alpha > 128), as defined in the module
      docstring; its length is its number of pixels;
    * band: the foreground pixels within 3 pixels of the edge, inward: the edge itself and the
      next two layers, each layer being what one more 4-neighbour erosion of the foreground
      peels off (the image frame erodes nothing);
    * bright: a band pixel whose luminance on black is above 0.85.

    halo = count(bright band pixels) / edge length. A clean edge of dark line art scores 0; a
    fringe of leftover light background one pixel wide scores about 1, and a band bright all
    through about 3 (exactly 3 along a straight edge). Pixels with alpha ≤ 128 cannot be bright
    on black (luminance ≤ 128 / 255), so the band loses nothing by starting at the > 128 edge.
    None when the alpha has no edge (empty, or foreground everywhere).
    """
    _require_same_shape(alpha, rgb[..., 0])
    foreground = alpha > FOREGROUND_THRESHOLD
    edge_length = _count(edge_map(foreground))
    if edge_length == 0:
        return None
    band = foreground & ~_erode_cross(foreground, HALO_BAND_DEPTH)
    weights = np.asarray(_LUMA_WEIGHTS, dtype=np.float64) / 255.0
    luminance = (rgb[band].astype(np.float64) @ weights) * (alpha[band] / 255.0)
    return _count(luminance > HALO_LUMINANCE) / edge_length


def flicker_score(colours: Sequence[npt.NDArray[np.uint8]], alphas: Sequence[Mask]) -> float | None:
    """Mean absolute alpha change, in grey levels (0..255), between consecutive frames over the
    pixels whose input did not change (`toonq.worker.engine.temporal.static_pixels`).

    `colours` are the input frames (H×W×4 or H×W×3) and `alphas` their H×W mattes. Every
    consecutive pair contributes each of its static pixels once: the score is the sum of
    |alpha[t] - alpha[t-1]| over those pixels divided by their number, pooled over all pairs,
    so a still outline that holds steady scores 0. None with fewer than two frames or when no
    pixel is static.
    """
    check_mattes(colours, alphas)
    change, static_count = 0, 0
    for index in range(1, len(alphas)):
        static = static_pixels(colours[index - 1], colours[index])
        before, after = alphas[index - 1], alphas[index]
        difference = np.maximum(before, after) - np.minimum(before, after)
        change += int(np.sum(difference, where=static, dtype=np.int64))
        static_count += _count(static)
    return change / static_count if static_count else None


def edge_map(foreground: BoolMap) -> BoolMap:
    """Foreground pixels with a 4-neighbour in the background; the frame is not an edge."""
    return foreground & ~_erode_cross(foreground, 1)


def _count(mask: BoolMap) -> int:
    return int(np.count_nonzero(mask))


def _require_same_shape(pred: npt.NDArray[np.generic], gt: npt.NDArray[np.generic]) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"masks differ in size: {pred.shape} vs {gt.shape}")


def _source_columns(
    source: int, target: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], tuple[npt.NDArray[np.int32], ...]]:
    """Left and right source columns and weights; past the border, the edge pixel alone."""
    start, fraction = _source_positions(source, target)
    before, after = start < 0, start >= source - 1
    start = np.where(before, 0, np.where(after, source - 1, start))
    fraction = np.where(before | after, np.float32(0), fraction)
    return start, np.minimum(start + 1, source - 1), _fixed_point_weights(fraction)


def _source_rows(
    source: int, target: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], tuple[npt.NDArray[np.int32], ...]]:
    """Upper and lower source rows and weights; rows past the border are clamped, weights not."""
    start, fraction = _source_positions(source, target)
    upper = np.clip(start, 0, source - 1)
    lower = np.clip(start + 1, 0, source - 1)
    return upper, lower, _fixed_point_weights(fraction)


def _source_positions(
    source: int, target: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    # cv2 keeps the inverse of its inverse scale and rounds the positions to float32.
    scale = 1.0 / (target / source)
    position = ((np.arange(target) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position).astype(np.intp)
    return start, position - start.astype(np.float32)


def _fixed_point_weights(fraction: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int32], ...]:
    one = np.float32(_WEIGHT_ONE)
    first = np.rint((np.float32(1) - fraction) * one).astype(np.int32)
    second = np.rint(fraction * one).astype(np.int32)
    return first, second


def _erode_square(mask: BoolMap, size: int) -> BoolMap:
    """Binary erosion by a size×size square (separable), with the outside counted as set."""
    reach = size // 2
    padded = np.pad(mask, reach, constant_values=True)
    rows = sliding_window_view(padded, size, axis=1).all(axis=-1)
    return np.asarray(sliding_window_view(rows, size, axis=0).all(axis=-1))


def _erode_cross(mask: BoolMap, iterations: int) -> BoolMap:
    """Binary erosion by the 4-neighbour cross, `iterations` times, the outside counted as set."""
    for _ in range(iterations):
        padded = np.pad(mask, 1, constant_values=True)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def _dilate_disk(mask: BoolMap, radius: int) -> BoolMap:
    """Binary dilation by a disk of `radius` pixels (x² + y² ≤ radius²).

    The disk is a stack of horizontal runs; per row offset, prefix sums along each row tell in
    O(1) whether any pixel is set within the run's reach.
    """
    if radius == 0:
        return mask
    height, width = mask.shape
    padded = np.pad(mask, radius)
    prefix = np.zeros((padded.shape[0], padded.shape[1] + 1), dtype=np.int32)
    np.cumsum(padded, axis=1, out=prefix[:, 1:])
    dilated = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        reach = math.isqrt(radius * radius - dy * dy)
        rows = prefix[radius + dy : radius + dy + height]
        hits = (
            rows[:, radius + reach + 1 : radius + reach + 1 + width]
            - rows[:, radius - reach : radius - reach + width]
        )
        dilated |= hits > 0
    return dilated
