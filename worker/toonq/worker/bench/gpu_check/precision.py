"""fp16 and bf16 masks against fp32's, on the check's model (ToonOut's architecture on a GPU).

A few anime-style pictures go through the engine's own path (`prepare`, then one batch) in each
precision; the half-precision masks are compared with fp32's in 8-bit alpha steps. The weights
are random, so the masks mean nothing as segmentations: the share of fp32's pixels that are
neither background nor foreground (`fp32_soft_fraction`) says how much of the mask the
comparison really exercises.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Final

import torch
from PIL import Image

from toonq.shared.job import JobParams
from toonq.shared.settings import DEFAULT_BG_COLOR
from toonq.worker.bench.gpu_check.compare import MaskDifference, mask_difference
from toonq.worker.bench.gpu_check.context import CheckContext, describe_error
from toonq.worker.bench.gpu_check.plan import PRECISIONS
from toonq.worker.bench.report import Section, markdown_table
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.samples import anime_sample

NAME: Final = "precision"
TITLE: Final = "fp16 and bf16 masks against fp32"
REFERENCE: Final = "fp32"
#: A mask value strictly between these is "soft": neither background nor foreground.
_SOFT: Final = (0.02, 0.98)


def run(ctx: CheckContext) -> Section:
    sizes = ctx.sizes
    side = sizes.resolution
    pictures = [
        anime_sample(seed=seed, size=(side, side), transparent=seed % 2 == 1)
        for seed in range(sizes.precision_images)
    ]
    masks: dict[str, torch.Tensor] = {}
    errors: dict[str, str] = {}
    for precision in PRECISIONS:
        try:
            masks[precision] = _masks(ctx, precision, pictures)
        except Exception as exc:  # one half precision failing must not hide the other's figures
            if precision == REFERENCE:
                raise
            errors[precision] = describe_error(exc)
        ctx.release_memory()
    reference = masks[REFERENCE]
    soft = ((reference > _SOFT[0]) & (reference < _SOFT[1])).float().mean().item()
    no_figures = dict.fromkeys((f.name for f in fields(MaskDifference)), None)
    rows = [
        {"precision": precision, "error": errors.get(precision)}
        | (
            asdict(mask_difference(masks[precision], reference))
            if precision in masks
            else no_figures
        )
        for precision in PRECISIONS
        if precision != REFERENCE
    ]
    data: dict[str, Any] = {
        "status": "ran",
        "device": str(ctx.device),
        "model": sizes.model,
        "resolution": side,
        "images": len(pictures),
        "reference": REFERENCE,
        "fp32_soft_fraction": round(soft, 4),
        "rows": rows,
    }
    summary = ", ".join(
        f"{row['precision']}: "
        + (row["error"] or f"max {row['alpha_max_steps']}, mean {row['alpha_mean_steps']} steps")
        for row in rows
    )
    return Section(NAME, TITLE, data, _markdown(data), summary)


def _masks(ctx: CheckContext, precision: str, pictures: list[Image.Image]) -> torch.Tensor:
    """The pictures' masks in `precision`, through the engine's path as one batch."""
    side = ctx.sizes.resolution
    params = JobParams(bg_color=DEFAULT_BG_COLOR, format="png", resolution=side)
    engine = MattingEngine(
        ctx.model_copy(), device=str(ctx.device), precision=precision, resolution=side
    )
    logits = engine.infer([engine.prepare(picture, params) for picture in pictures])
    return torch.cat([torch.sigmoid(item.float()).cpu() for item in logits])


def _markdown(data: dict[str, Any]) -> str:
    note = (
        f"`{data['model']}` (random weights) at {data['resolution']}x{data['resolution']} on "
        f"{data['device']}, {data['images']} anime-style pictures through the engine; masks "
        f"against fp32's in 1/255 steps. fp32's mask is soft (neither 0 nor 1) on "
        f"{data['fp32_soft_fraction']:.1%} of the pixels."
    )
    table = markdown_table(
        ["precision", "max steps", "mean steps", "8-bit alpha max", "8-bit alpha mean",
         "8-bit alpha differing", "non-finite pixels", "error"],
        [
            (r["precision"], r["max_steps"], r["mean_steps"], r["alpha_max_steps"],
             r["alpha_mean_steps"], r["alpha_differing_fraction"], r["nonfinite_pixels"],
             r["error"])
            for r in data["rows"]
        ],
    )  # fmt: skip
    return f"{note}\n\n{table}"
