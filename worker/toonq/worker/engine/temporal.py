"""Steady mattes across an animation's frames.

The model sees each frame alone, so where a frame does not change its prediction still drifts by
a few levels from frame to frame, and a still outline flickers once the frames play. A pixel is
*static* between two consecutive frames when none of its input channels changed by more than
`STATIC_TOLERANCE`; over each maximal run of frames through which a pixel stays static, its alpha
becomes the mean of the predictions over that run. Pixels that change keep each frame's
prediction, so moving parts follow the model exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

#: A pixel is static between two frames when each of its R, G, B (and A) input values differs by
#: at most this many levels. Re-encoding an animation (GIF palettes and dithering, lossy WebP)
#: moves unchanged pixels by a level or two; real motion at an edge moves them by far more.
STATIC_TOLERANCE: Final[int] = 2


def static_pixels(
    previous: npt.NDArray[np.uint8], current: npt.NDArray[np.uint8]
) -> npt.NDArray[np.bool_]:
    """The H×W map of the pixels whose every channel differs by at most `STATIC_TOLERANCE`
    between two H×W×4 (or H×W×3) uint8 frames of the same shape."""
    _check_frame(previous)
    _check_frame(current)
    if previous.shape != current.shape:
        raise ValueError(f"frames differ in shape: {previous.shape} vs {current.shape}")
    # |a - b| in uint8 without widening: the larger minus the smaller never wraps.
    difference = np.maximum(previous, current) - np.minimum(previous, current)
    # Channel by channel: a reduction over a last axis of 3 or 4 is several times slower.
    static = difference[..., 0] <= STATIC_TOLERANCE
    for channel in range(1, difference.shape[2]):
        static &= difference[..., channel] <= STATIC_TOLERANCE
    return static


def stabilise_alpha(
    colours: Sequence[npt.NDArray[np.uint8]], alphas: Sequence[npt.NDArray[np.uint8]]
) -> list[npt.NDArray[np.uint8]]:
    """Each frame's alpha with every static run of a pixel replaced by the run's mean.

    `colours` are the input frames (H×W×4 or H×W×3 uint8, what the model was given) and `alphas`
    the predicted H×W uint8 mattes, one per frame. For each pixel, the frames split into maximal
    runs over which `static_pixels` holds between every consecutive pair; within a run the alpha
    becomes the mean of the run's predictions, rounded half up. A run of one frame (a pixel that
    changed on both sides) keeps its prediction. Returns new arrays; a single frame is returned
    as it is.

    Two passes, no T×H×W intermediate: forward, each pixel's running sum and length of its run so
    far (int32), whose rounded mean is written to the frame where the run ends; backward, every
    frame takes the value of the next frame wherever the pixel is static between the two, which
    carries each run's mean from its last frame back to its first.
    """
    check_mattes(colours, alphas)
    if len(alphas) < 2:
        return list(alphas)
    # One packed bit per pixel and pair keeps the run boundaries for the backward pass.
    pixel_count = alphas[0].size
    boundaries: list[npt.NDArray[np.uint8]] = []
    stabilised: list[npt.NDArray[np.uint8]] = []
    run_sum = alphas[0].astype(np.int32)
    run_length = np.ones_like(run_sum)
    for index in range(1, len(alphas)):
        static = static_pixels(colours[index - 1], colours[index])
        boundaries.append(np.packbits(static, axis=None))
        changed = ~static
        stabilised.append(_ending_runs(alphas[index - 1], run_sum, run_length, changed))
        run_sum += alphas[index]
        np.copyto(run_sum, alphas[index], where=changed)
        run_length += 1
        np.copyto(run_length, 1, where=changed)
    stabilised.append(_ending_runs(alphas[-1], run_sum, run_length, np.True_))
    for index in range(len(stabilised) - 2, -1, -1):
        bits = np.unpackbits(boundaries[index], count=pixel_count)
        static = bits.view(np.bool_).reshape(alphas[0].shape)
        np.copyto(stabilised[index], stabilised[index + 1], where=static)
    return stabilised


def _ending_runs(
    prediction: npt.NDArray[np.uint8],
    run_sum: npt.NDArray[np.int32],
    run_length: npt.NDArray[np.int32],
    ending: npt.NDArray[np.bool_] | np.bool_,
) -> npt.NDArray[np.uint8]:
    """A copy of `prediction` holding, where a run of several frames ends, the run's mean
    rounded half up. A run of one frame is its prediction, and where no run ends the backward
    pass overwrites the value, so only the longer ending runs are divided."""
    means = prediction.copy()
    longer = ending & (run_length > 1)
    total, count = run_sum[longer], run_length[longer]
    means[longer] = (2 * total + count) // (2 * count)
    return means


def check_mattes(
    colours: Sequence[npt.NDArray[np.uint8]], alphas: Sequence[npt.NDArray[np.uint8]]
) -> None:
    """Raise ValueError unless `colours` are H×W×4 (or H×W×3) uint8 frames, with one H×W uint8
    matte per frame, all of one size."""
    if len(colours) != len(alphas):
        raise ValueError(f"{len(colours)} frames but {len(alphas)} mattes")
    for frame, alpha in zip(colours, alphas, strict=True):
        _check_frame(frame)
        if alpha.dtype != np.uint8 or alpha.ndim != 2:
            raise ValueError(f"expected uint8 H×W mattes, got {alpha.dtype} of shape {alpha.shape}")
        if frame.shape[:2] != alpha.shape or alpha.shape != alphas[0].shape:
            raise ValueError(
                f"a {alpha.shape} matte does not match its {frame.shape} frame"
                f" or the first matte {alphas[0].shape}"
            )


def _check_frame(frame: npt.NDArray[np.uint8]) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(
            f"expected uint8 H×W×4 or H×W×3 frames, got {frame.dtype} of shape {frame.shape}"
        )
