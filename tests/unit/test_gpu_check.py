"""The parts of `toonq gpu-check` that need no device: mask differences in 8-bit steps, how
long a throughput case is expected to take, and the cases a spent time limit leaves out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toonq.worker.bench.gpu_check import model_speed
from toonq.worker.bench.gpu_check.compare import mask_difference
from toonq.worker.bench.gpu_check.context import CheckContext, Deadline
from toonq.worker.bench.gpu_check.plan import FULL
from toonq.worker.bench.model import ModelRow


def test_identical_masks_differ_by_nothing() -> None:
    mask = torch.rand(1, 1, 8, 8)
    difference = mask_difference(mask, mask.clone())
    assert (difference.max_steps, difference.mean_steps) == (0, 0)
    assert (difference.alpha_max_steps, difference.alpha_differing_fraction) == (0, 0)
    assert difference.nonfinite_pixels == 0


def test_differences_are_in_steps_of_the_8_bit_alpha() -> None:
    reference = torch.full((1, 1, 4, 4), 100.5 / 255)
    mask = reference.clone()
    mask[0, 0, 0, :] += 2 / 255  # one row of four pixels two steps up
    difference = mask_difference(mask, reference)
    assert difference.max_steps == pytest.approx(2, abs=1e-3)
    assert difference.mean_steps == pytest.approx(0.5, abs=1e-3)
    assert difference.alpha_max_steps == 2
    assert difference.alpha_differing_fraction == 0.25


def test_non_finite_pixels_are_counted_and_left_out() -> None:
    reference = torch.full((1, 1, 2, 2), 0.5)
    mask = reference.clone()
    mask[0, 0, 0, 0] = float("nan")
    mask[0, 0, 0, 1] = float("inf")
    difference = mask_difference(mask, reference)
    assert difference.nonfinite_pixels == 2
    assert difference.max_steps == 0
    nothing_finite = mask_difference(torch.full((2, 2), float("nan")), torch.zeros(2, 2))
    assert (nothing_finite.max_steps, nothing_finite.nonfinite_pixels) == (None, 4)


def test_a_case_is_expected_to_take_what_its_precision_took_per_image() -> None:
    estimate = model_speed.Estimate(FULL)
    first = estimate.seconds("fp16", False, 1)
    assert first >= FULL.first_call_estimate_s
    estimate.record(ModelRow("fp16", False, 4, images_per_s=20.0, ms_per_image=50.0))
    # Eight images at 50 ms a call of 0.4 s: a warm-up of three calls, then `repeat` timed
    # ones, which fit in the case's budget.
    assert FULL.repeat * 0.4 < FULL.case_budget_s
    assert estimate.seconds("fp16", False, 8) == pytest.approx(3 * 0.4 + FULL.repeat * 0.4)
    # Thirty-two: the timed calls stop once they have taken the budget, one call past it at most.
    assert estimate.seconds("fp16", False, 32) == pytest.approx(3 * 1.6 + FULL.case_budget_s + 1.6)
    # Another precision has not been timed yet.
    assert estimate.seconds("fp32", False, 8) == first


def test_a_compiled_case_is_expected_to_take_the_last_compilation() -> None:
    estimate = model_speed.Estimate(FULL)
    estimate.record(ModelRow("fp16", False, 8, images_per_s=20.0, ms_per_image=50.0))
    assert estimate.seconds("fp16", True, 8) >= FULL.compile_estimate_s
    estimate.record(
        ModelRow("fp16", True, 8, images_per_s=40.0, ms_per_image=25.0, first_call_s=70.0)
    )
    assert 70 <= estimate.seconds("bf16", True, 8) < FULL.compile_estimate_s


def test_with_no_time_left_every_case_is_skipped_and_says_why() -> None:
    ctx = CheckContext(torch.device("cpu"), FULL, Deadline(0), Path("unused"))
    rows = model_speed.run(ctx).data["rows"]
    assert [(row["precision"], row["compiled"], row["batch_size"]) for row in rows] == (
        model_speed.cases(FULL)
    )
    for row in rows:
        assert row["images_per_s"] is None
        assert row["skipped"].startswith("time limit: about ")
    assert ctx.model_images_per_s == {}
