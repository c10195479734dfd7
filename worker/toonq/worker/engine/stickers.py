"""The last step of a job whose output is more than one still cut-out: an animation's frames, or
a sticker (finishing, a platform preset).

    cut-out frames (RGBA, the matte in their alpha)
        -> finishing (trim, margin, outline, shadow: the same geometry on every frame)
        -> the job's preset fitted (scale, frames, palette or quality), or the plain container:
           a still PNG or lossless WebP, an APNG or a lossless animated WebP

Frame timing (each frame's duration, the loop count) goes through unchanged unless a preset
has to merge frames, which keeps the total time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from toonq.shared.job import JobParams
from toonq.worker.engine.animated_encode import encode_animated_webp, encode_apng
from toonq.worker.engine.encode import CONTENT_TYPES, encode_rgba_pixels
from toonq.worker.engine.finishing import apply_finishing
from toonq.worker.engine.presets import FittedOutput, fit_preset


@dataclass(frozen=True)
class FrameTiming:
    """How an animation plays: each frame's duration and the loop count (0: for ever, N: N
    plays in all)."""

    durations_ms: list[int]
    loop: int


def needs_composition(options: JobParams) -> bool:
    """Whether a still's output goes through `compose` rather than the plain cut-out encoder."""
    return options.preset is not None or options.trim or options.outline > 0 or options.shadow


def compose(
    frames: Sequence[npt.NDArray[np.uint8]],
    timing: FrameTiming | None,
    options: JobParams,
    *,
    png_compress_level: int,
) -> FittedOutput:
    """The output file of cut-out `frames` (one for a still, with `timing` None)."""
    finished = apply_finishing(
        frames,
        trim=options.trim,
        margin=options.margin,
        outline=options.outline,
        shadow=options.shadow,
    )
    durations, loop = (timing.durations_ms, timing.loop) if timing is not None else ([0], 0)
    if options.preset is not None:
        return fit_preset(
            finished,
            durations,
            loop,
            preset=options.preset,
            fmt=options.format,
            png_compress_level=png_compress_level,
        )
    height, width = finished[0].shape[:2]
    if timing is None:
        data = encode_rgba_pixels(
            finished[0], fmt=options.format, png_compress_level=png_compress_level
        )
    elif options.format == "png":
        data = encode_apng(finished, durations, loop, compress_level=png_compress_level)
    else:
        data = encode_animated_webp(finished, durations, loop)
    return FittedOutput(
        data=data,
        content_type=CONTENT_TYPES[options.format],
        extension=options.format,
        changes=(),
        width=width,
        height=height,
        frames=len(finished),
    )
