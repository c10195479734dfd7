"""The birefnet-dev fixture on the device in fp32, against the reference implementation's
outputs on the CPU: what `tests/unit/test_birefnet_fixture.py` checks, on the GPU's kernels.

fp32 here means IEEE fp32, as the engine sets it (TF32 off); the report records the flags.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Final

import torch

from toonq.worker.bench.birefnet_dev import (
    LOGITS_TOLERANCE,
    MASK_TOLERANCE,
    fixture_model,
    reference_outputs,
)
from toonq.worker.bench.gpu_check.compare import mask_difference
from toonq.worker.bench.gpu_check.context import CheckContext, skipped
from toonq.worker.bench.report import Section, markdown_table
from toonq.worker.birefnet import deform_conv
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.weights import LoadedModel

NAME: Final = "fixture"
TITLE: Final = "The fixture in fp32 against the CPU reference"
#: The fixture's inputs are 128 pixels high; the engine wants a resolution, unused here.
_RESOLUTION: Final = 128


def run(ctx: CheckContext) -> Section:
    if not (ctx.fixture_dir / "keys.tsv").is_file():
        reason = f"no birefnet-dev fixture at {ctx.fixture_dir} (run from the repository's root)"
        return skipped(NAME, TITLE, reason)
    loaded = LoadedModel(fixture_model(ctx.fixture_dir), name="birefnet-dev", revision=None)
    engine = MattingEngine(loaded, device=str(ctx.device), precision="fp32", resolution=_RESOLUTION)
    rows = []
    for reference in reference_outputs(ctx.fixture_dir):
        stacked = engine.stack_batch([reference.model_input.to(engine.device)])
        (logits,) = engine.run_batch(stacked)
        logits = logits.float().cpu()
        mask = torch.sigmoid(logits)
        logits_error = (logits - reference.logits).abs().max().item()
        mask_error = (mask - reference.mask).abs().max().item()
        rows.append(
            {
                "input": reference.tag,
                **asdict(mask_difference(mask, reference.mask)),
                "logits_max_abs": logits_error,
                "mask_max_abs": mask_error,
                "within_test_tolerance": logits_error <= LOGITS_TOLERANCE
                and mask_error <= MASK_TOLERANCE,
            }
        )
    data: dict[str, Any] = {
        "status": "ran",
        "device": str(engine.device),
        "precision": "fp32",
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
        "deform_conv": deform_conv.backend_for(engine.device),
        "test_tolerance": {"logits_max_abs": LOGITS_TOLERANCE, "mask_max_abs": MASK_TOLERANCE},
        "rows": rows,
    }
    worst = max(row["max_steps"] or 0.0 for row in rows)
    passed = all(row["within_test_tolerance"] for row in rows)
    summary = f"max {worst:.3g} alpha steps; within the test's tolerance: {passed}"
    return Section(NAME, TITLE, data, _markdown(data), summary)


def _markdown(data: dict[str, Any]) -> str:
    note = (
        f"The birefnet-dev model in fp32 on {data['device']} (TF32 {data['tf32']}, deformable "
        f"conv: {data['deform_conv']}) against the reference implementation's CPU outputs. "
        "Steps are 1/255, the 8-bit alpha's."
    )
    table = markdown_table(
        ["input", "max steps", "mean steps", "8-bit alpha max", "8-bit alpha differing",
         "logits max abs", "mask max abs", "within the test's tolerance"],
        [
            (r["input"], r["max_steps"], r["mean_steps"], r["alpha_max_steps"],
             r["alpha_differing_fraction"], r["logits_max_abs"], r["mask_max_abs"],
             r["within_test_tolerance"])
            for r in data["rows"]
        ],
    )  # fmt: skip
    return f"{note}\n\n{table}"
