"""The model's own throughput: images/s and peak memory by precision x batch size, eager, and
with torch.compile at one batch size.

Each case is `toonq.worker.bench.model.measure`: the engine's `run_batch` on random input at the
model resolution, a warm-up call, then timed calls that each end with a device sync. A case stops
adding timed calls after the plan's `case_budget_s`, and is not started (it is recorded as
skipped) when what it is expected to take, from the cases timed before it, exceeds the time left.
An eager batch that runs out of memory, or fails, skips the larger ones of its precision.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Final

import torch

from toonq.worker.bench.gpu_check.context import CheckContext, describe_error
from toonq.worker.bench.gpu_check.plan import PRECISIONS, Sizes
from toonq.worker.bench.model import OUT_OF_MEMORY, ModelRow, measure
from toonq.worker.bench.report import Section, markdown_table
from toonq.worker.engine.weights import LoadedModel

NAME: Final = "throughput"
TITLE: Final = "Model throughput by precision, batch size and torch.compile"
#: An eager warm-up call costs this many timed calls: cuDNN tries its algorithms for each new
#: input shape.
_WARMUP_CALLS: Final = 3


Case = tuple[str, bool, int]


def cases(sizes: Sizes) -> list[Case]:
    """(precision, compiled, batch size) in the order they run: every eager case first, since
    a compilation takes minutes."""
    eager = [(precision, False, batch) for precision in PRECISIONS for batch in sizes.batch_sizes]
    compiled = [(precision, True, sizes.compile_batch) for precision in PRECISIONS]
    return eager + compiled


class Estimate:
    """How long a case will take, from the cases timed before it."""

    def __init__(self, sizes: Sizes) -> None:
        self._sizes = sizes
        self._s_per_image: dict[tuple[str, bool], float] = {}
        self._compile_s: float | None = None

    def record(self, row: ModelRow) -> None:
        if row.ms_per_image is not None:
            self._s_per_image[(row.precision, row.compiled)] = row.ms_per_image / 1000
        if row.compiled and row.first_call_s is not None:
            self._compile_s = row.first_call_s

    def seconds(self, precision: str, compiled: bool, batch: int) -> float:
        sizes = self._sizes
        per_image = self._s_per_image.get((precision, compiled)) or self._s_per_image.get(
            (precision, False)
        )
        call_s = per_image * batch if per_image is not None else sizes.first_call_estimate_s
        warmup_s = (
            (self._compile_s or sizes.compile_estimate_s) if compiled else _WARMUP_CALLS * call_s
        )
        # The timed calls go on until the case's budget is spent: one call may overshoot it.
        timed_s = min(sizes.repeat * call_s, sizes.case_budget_s + call_s)
        return warmup_s + timed_s


def run(ctx: CheckContext) -> Section:
    sizes = ctx.sizes
    estimate = Estimate(sizes)
    #: The smallest eager batch of each precision that ran out of memory or failed, and how.
    failed_at: dict[str, tuple[int, str]] = {}
    rows: list[dict[str, Any]] = []
    by_group: dict[tuple[str, bool], list[Case]] = {}
    for case in cases(sizes):
        by_group.setdefault(case[:2], []).append(case)
    for (precision, compiled), group in by_group.items():
        # One copy per group: the engine moves it to the device and precision, and the peak
        # memory of a case then holds this precision's weights alone.
        loaded = None
        for _, _, batch in group:
            reason = _reason_to_skip(ctx, estimate, failed_at, precision, compiled, batch)
            if reason is not None:
                rows.append(asdict(ModelRow(precision, compiled, batch)) | {"skipped": reason})
                continue
            if loaded is None:
                loaded = ctx.model_copy()
            row = _measure(ctx, loaded, precision, compiled, batch)
            estimate.record(row)
            if row.error is not None:
                if not compiled:
                    how = OUT_OF_MEMORY if row.error == OUT_OF_MEMORY else "an error"
                    failed_at.setdefault(precision, (batch, how))
                ctx.release_memory()
            if row.images_per_s is not None:
                ctx.model_images_per_s[(precision, compiled, batch)] = row.images_per_s
            rows.append(asdict(row) | {"skipped": None})
        if compiled and loaded is not None:
            torch._dynamo.reset()  # compiled graphs hold on to their model's weights
        del loaded
        ctx.release_memory()
    data: dict[str, Any] = {
        "status": "ran",
        "device": str(ctx.device),
        "model": sizes.model,
        "resolution": sizes.resolution,
        "repeat": sizes.repeat,
        "case_budget_s": sizes.case_budget_s,
        "rows": rows,
    }
    timed = [row for row in rows if row["images_per_s"] is not None]
    best = max(timed, key=lambda row: row["images_per_s"], default=None)
    summary = f"{len(timed)}/{len(rows)} cases timed" + (
        f"; best {best['images_per_s']} images/s ({best['precision']}, batch "
        f"{best['batch_size']}{', compiled' if best['compiled'] else ''})"
        if best
        else ""
    )
    return Section(NAME, TITLE, data, _markdown(data), summary)


def _measure(
    ctx: CheckContext, loaded: LoadedModel, precision: str, compiled: bool, batch: int
) -> ModelRow:
    """`measure` one case; whatever it raises is the row's error: one broken case must not
    cost the others their figures."""
    sizes = ctx.sizes
    try:
        return measure(
            loaded,
            str(ctx.device),
            precision,
            compiled,
            batch,
            sizes.resolution,
            sizes.repeat,
            budget_s=sizes.case_budget_s,
        )
    except Exception as exc:
        return ModelRow(precision, compiled, batch, error=describe_error(exc))


def _reason_to_skip(
    ctx: CheckContext,
    estimate: Estimate,
    failed_at: dict[str, tuple[int, str]],
    precision: str,
    compiled: bool,
    batch: int,
) -> str | None:
    if compiled and not ctx.sizes.compile:
        return "torch.compile is not timed at these sizes"
    if precision in failed_at and batch >= failed_at[precision][0]:
        smallest, how = failed_at[precision]
        return f"{how} at batch {smallest}"
    needed, left = estimate.seconds(precision, compiled, batch), ctx.deadline.remaining()
    if needed > left:
        return f"time limit: about {needed:.0f} s needed, {max(left, 0):.0f} s left"
    return None


def _markdown(data: dict[str, Any]) -> str:
    note = (
        f"`{data['model']}` at {data['resolution']}x{data['resolution']} on {data['device']}: "
        "the model step alone on random input; each call ends with a device sync. Peak memory "
        "is `torch.cuda.max_memory_allocated` during the timed calls."
    )
    table = markdown_table(
        ["precision", "compile", "batch", "images/s", "ms/image", "first call s", "peak GiB",
         "error or skipped"],
        [
            (r["precision"], "on" if r["compiled"] else "off", r["batch_size"], r["images_per_s"],
             r["ms_per_image"], r["first_call_s"], r["peak_memory_gib"],
             r["error"] or r["skipped"])
            for r in data["rows"]
        ],
    )  # fmt: skip
    return f"{note}\n\n{table}"
