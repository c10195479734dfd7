"""Item 3: the CPU cost of each processing stage, in milliseconds per megapixel.

Decoding (PNG, JPEG, WebP inputs), compositing onto grey, resizing to the model input,
post-processing (logits to alpha at the input size, `refine_foreground`) and encoding in every
format and setting toonq offers, each on anime-like and photo-like cut-outs of 1 and 4
megapixels. Encodings record their size and are checked to be lossless. Ratios compare the
cases of one stage on one image, timed in turns so that the machine's load weighs on all alike.

Then the whole of one job on the CPU (`job_cpu`): the engine's path from PNG bytes to PNG bytes
with a model that costs nothing, in CPU time, against the codec work no job avoids: decoding the
same PNG and encoding its pixels again with imagecodecs at level 1.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Final

import imagecodecs
import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from toonq.shared.job import JobParams
from toonq.shared.settings import DEFAULT_BG_COLOR
from toonq.worker.bench.images import KINDS, Kind, cutout
from toonq.worker.bench.report import BenchOptions, Section, markdown_table
from toonq.worker.bench.timing import time_interleaved
from toonq.worker.engine.compositing import _swap_bg_to_gray, composite_rgb
from toonq.worker.engine.decode import decode_image
from toonq.worker.engine.encode import (
    WEBP_METHOD,
    WEBP_QUALITY,
    available_png_encoders,
    default_png_encoder,
    encode_mask,
    encode_rgba,
)
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.refine import refine_foreground
from toonq.worker.engine.standin import STANDIN_PREFIX, StandInModel
from toonq.worker.engine.transforms import logits_to_alpha, to_model_input
from toonq.worker.engine.weights import LoadedModel

#: Image sides: 1 and 4 megapixels (the keys of the report), or small ones for --quick.
SIDES: Final = {"1": 1024, "4": 2048}
QUICK_SIDES: Final = {"0.016": 128, "0.066": 256}
#: PNG levels; Pillow's default, 6, comes first as every encoding's baseline.
PNG_LEVELS: Final = (6, 0, 1, 2, 3)
#: Lossless WebP (method, quality): toonq's default, Pillow's default quality, and two slower
#: settings that compress harder (methods 5 and 6 cost 10x more again).
WEBP_SETTINGS: Final = ((WEBP_METHOD, WEBP_QUALITY), (0, 80), (1, 25), (4, 25))
RESOLUTION: Final = 1024
QUICK_RESOLUTION: Final = 128
#: Inputs as they typically arrive: PNG at Pillow's default level, JPEG and lossy WebP at 90.
_INPUT_SAVE_OPTIONS: Final[dict[str, dict[str, Any]]] = {
    "png": {},
    "jpeg": {"quality": 90},
    "webp": {"quality": 90},
}
_NO_PIXEL_LIMIT: Final = 1 << 40

Case = tuple[str, Callable[[], object]]


@dataclass(frozen=True)
class StageRow:
    stage: str
    case: str
    image: str
    megapixels: str
    ms: float
    ms_per_megapixel: float
    #: ms relative to the stage's first case on the same image.
    relative: float
    #: Encoded size, for encodings.
    bytes: int | None = None


@dataclass(frozen=True)
class JobCpuRow:
    image: str
    megapixels: str
    #: CPU milliseconds of one job through the engine on the CPU, with a model that costs nothing.
    job_ms: float
    #: CPU milliseconds of the codec floor: PNG decode + PNG encode (imagecodecs, level 1).
    codec_floor_ms: float
    #: job_ms / codec_floor_ms.
    ratio: float


def run(options: BenchOptions) -> Section:
    sides = QUICK_SIDES if options.quick else SIDES
    resolution = options.resolution or (QUICK_RESOLUTION if options.quick else RESOLUTION)
    repeat = 1 if options.quick else options.repeat
    rows: list[StageRow] = []
    jobs: list[JobCpuRow] = []
    for kind in KINDS:
        for megapixels, side in sides.items():
            pixels = cutout(kind, (side, side))
            rows += _measure_image(kind, megapixels, pixels, resolution, repeat)
            jobs.append(_measure_job(kind, megapixels, _save(pixels, "png"), resolution, repeat))
    data: dict[str, Any] = {
        "resolution": resolution,
        "repeat": repeat,
        "png_encoder": default_png_encoder(),
        "rows": [asdict(row) for row in rows],
        "job_cpu": [asdict(job) for job in jobs],
    }
    note = (
        "Milliseconds per megapixel (relative to the stage's first case on the same image; "
        f"encodings with their size). The model input is {resolution}x{resolution}: an image "
        "of that size is not resized, only normalised, as in the engine."
    )
    job_note = (
        "CPU milliseconds of one job on the CPU device (PNG in, `prepare`, a model that costs "
        "nothing, `finish`, PNG out), against the codec floor: the same PNG decoded and its "
        "pixels encoded again with imagecodecs at level 1. On one thread, kernel time included."
    )
    markdown = f"{note}\n\n{_markdown(rows)}\n\n{job_note}\n\n{_job_markdown(jobs)}"
    return Section("stages", "CPU cost per stage (ms per megapixel)", data, markdown)


def _measure_image(
    kind: Kind, megapixels: str, pixels: npt.NDArray[np.uint8], resolution: int, repeat: int
) -> list[StageRow]:
    name = f"{kind} {megapixels} MP"
    height, width = pixels.shape[:2]
    rgba = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()
    # What the engine on the CPU resizes: the composite's H×W×3 array, seen as 1×3×H×W.
    grey = torch.from_numpy(composite_rgb(pixels)).permute(2, 0, 1).unsqueeze(0)
    rgb, alpha = pixels[..., :3].transpose(2, 0, 1), pixels[..., 3]
    alpha_t = torch.from_numpy(np.ascontiguousarray(alpha))
    logits = torch.zeros(1, resolution, resolution)
    inputs = {fmt: _save(pixels, fmt) for fmt in _INPUT_SAVE_OPTIONS}

    stages: dict[str, list[Case]] = {
        "decode": [
            (fmt, partial(decode_image, data, max_pixels=_NO_PIXEL_LIMIT))
            for fmt, data in inputs.items()
        ],
        "preprocess": [
            ("composite onto grey", partial(composite_rgb, pixels)),
            ("composite onto grey, torch (the GPU path's code)", partial(_swap_bg_to_gray, rgba)),
            (
                "resize + normalise to the model input",
                partial(to_model_input, grey, resolution),
            ),
        ],
        "postprocess": [
            (
                "sigmoid + resize back to the input",
                partial(logits_to_alpha, logits, (height, width)),
            ),
            ("refine_foreground", partial(refine_foreground, rgba[0, :3], alpha_t)),
        ],
        "encode": _encode_cases(rgb, alpha),
    }
    rows = []
    for stage, cases in stages.items():
        medians = time_interleaved([fn for _, fn in cases], repeat=repeat)
        for (case, fn), ms in zip(cases, medians, strict=True):
            size = len(_checked_lossless(fn(), pixels, case)) if stage == "encode" else None
            rows.append(
                StageRow(
                    stage=stage,
                    case=case,
                    image=name,
                    megapixels=megapixels,
                    ms=round(ms, 3),
                    ms_per_megapixel=round(ms / (height * width / 1e6), 3),
                    relative=round(ms / medians[0], 3),
                    bytes=size,
                )
            )
    return rows


def _measure_job(
    kind: Kind, megapixels: str, png: bytes, resolution: int, repeat: int
) -> JobCpuRow:
    nothing = LoadedModel(StandInModel(0), name=f"{STANDIN_PREFIX}0", revision="standin")
    engine = MattingEngine(nothing, device="cpu", resolution=resolution)
    params = JobParams(bg_color=DEFAULT_BG_COLOR, format="png", resolution=resolution)

    def job() -> bytes:
        prepared = engine.prepare(png, params)
        (logits,) = engine.run_batch(engine.stack_batch([prepared.model_input]))
        return engine.finish(prepared, logits).data

    def codec_floor() -> bytes:
        return bytes(imagecodecs.png_encode(imagecodecs.png_decode(png), level=1))

    with _one_torch_thread():
        job_ms, floor_ms = time_interleaved(
            [job, codec_floor], repeat=repeat, clock=time.process_time
        )
    return JobCpuRow(
        image=f"{kind} {megapixels} MP",
        megapixels=megapixels,
        job_ms=round(job_ms, 3),
        codec_floor_ms=round(floor_ms, 3),
        ratio=round(job_ms / floor_ms, 3),
    )


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """The process's CPU time is then one job's: no idle intra-op threads spinning beside it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _encode_cases(rgb: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8]) -> list[Case]:
    """Every encoding toonq can produce; the first (Pillow's default PNG level) is the baseline."""
    encode = partial(encode_rgba, rgb, alpha)
    cases: list[Case] = [
        (
            f"png {encoder} level {level}",
            partial(encode, fmt="png", png_compress_level=level, png_encoder=encoder),
        )
        for encoder in reversed(available_png_encoders())  # Pillow first: the baseline
        for level in PNG_LEVELS
    ]
    cases += [
        (
            f"webp lossless method {method} quality {quality}",
            partial(encode, fmt="webp", webp_method=method, webp_quality=quality),
        )
        for method, quality in WEBP_SETTINGS
    ]
    cases.append(("mask png level 1", partial(encode_mask, alpha, png_compress_level=1)))
    return cases


def _checked_lossless(data: object, pixels: npt.NDArray[np.uint8], case: str) -> bytes:
    """The encoding, once checked to decode to exactly the pixels (or alpha) it was given."""
    assert isinstance(data, bytes)
    with Image.open(io.BytesIO(data)) as image:
        decoded = np.asarray(image)
    expected = pixels[..., 3] if decoded.ndim == 2 else pixels
    if not np.array_equal(decoded, expected):
        raise AssertionError(f"{case} is not lossless")
    return data


def _save(pixels: npt.NDArray[np.uint8], fmt: str) -> bytes:
    image = Image.fromarray(pixels)
    if fmt == "jpeg":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **_INPUT_SAVE_OPTIONS[fmt])
    return buffer.getvalue()


def _job_markdown(jobs: Sequence[JobCpuRow]) -> str:
    return markdown_table(
        ["job on the CPU", "job (ms CPU)", "codec floor (ms CPU)", "job / floor"],
        [(job.image, job.job_ms, job.codec_floor_ms, job.ratio) for job in jobs],
    )


def _markdown(rows: Sequence[StageRow]) -> str:
    """One table per stage: a row per case, ms per megapixel (relative) per image."""
    images = list(dict.fromkeys(row.image for row in rows))
    parts = []
    for stage in dict.fromkeys(row.stage for row in rows):
        cells: dict[str, dict[str, str]] = {}
        for row in (r for r in rows if r.stage == stage):
            size = f", {row.bytes / 1024:.0f} KiB" if row.bytes is not None else ""
            cells.setdefault(row.case, {})[row.image] = (
                f"{row.ms_per_megapixel:.3g} ({row.relative:.2f}x{size})"
            )
        table = markdown_table(
            [stage, *images],
            [(case, *(by.get(i, "") for i in images)) for case, by in cells.items()],
        )
        parts.append(table)
    return "\n\n".join(parts)
