"""`toonq gpu-check`: the skip without CUDA, every part at tiny sizes on the CPU (`--device cpu
--quick`) and what a spent time limit leaves out, read from the report; never a speed test."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support import run_toonq
from toonq.worker.bench.gpu_check.plan import PRECISIONS, QUICK

# One OpenMP thread: on a busy two-core machine, two threads wait on each other for seconds.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "TOONQ_LOG_FORMAT": "json"}
PARTS = ["fixture", "precision", "throughput", "oom", "overlap", "end_to_end"]


def _check(*args: str) -> tuple[list[str], Path, dict[str, Any]]:
    result = run_toonq("gpu-check", *args, env=os.environ | QUIET_ENV, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    path = Path(lines[-1].removeprefix("report: "))
    return lines, path, json.loads(path.read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gpu-check") / "reports"
    return _check("--device", "cpu", "--quick", "--out", str(out))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_says_so_and_writes_no_report(tmp_path: Path) -> None:
    result = run_toonq("gpu-check", "--out", str(tmp_path / "reports"), env=os.environ | QUIET_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "skipped: no CUDA device"
    assert not (tmp_path / "reports").exists()


def test_the_cpu_needs_the_quick_sizes(tmp_path: Path) -> None:
    result = run_toonq("gpu-check", "--device", "cpu", "--out", str(tmp_path), env=dict(os.environ))
    assert result.returncode == 2
    assert "--quick" in result.stderr
    assert not list(tmp_path.iterdir())


def test_prints_each_part_then_the_report_path_last(quick) -> None:
    lines, path, _ = quick
    assert lines[0].startswith("machine: CPU ")
    assert lines[-1] == f"report: {path}"
    assert path.suffix == ".json"
    assert path.with_suffix(".md").read_text().startswith("# toonq gpu-check, ")
    for part in PARTS:
        assert f"== {part} ==" in lines


def test_every_part_ran_and_the_report_lists_them_in_order(quick) -> None:
    _, _, report = quick
    assert list(report["sections"]) == PARTS
    assert [part["status"] for part in report["sections"].values()] == ["ran"] * len(PARTS)
    check = report["check"]
    assert (check["device"], check["quick"], check["failed"]) == ("cpu", True, [])
    assert check["sizes"]["model"] == QUICK.model
    assert report["machine"]["torch"] == torch.__version__


def test_the_fixture_matches_the_cpu_reference(quick) -> None:
    fixture = quick[2]["sections"]["fixture"]
    assert fixture["precision"] == "fp32"
    assert [row["input"] for row in fixture["rows"]] == ["128x128", "128x192"]
    for row in fixture["rows"]:
        assert row["within_test_tolerance"] is True
        assert row["max_steps"] < 0.1
        assert row["alpha_max_steps"] <= 1
        assert row["nonfinite_pixels"] == 0


def test_half_precisions_are_compared_with_fp32(quick) -> None:
    part = quick[2]["sections"]["precision"]
    assert part["reference"] == "fp32"
    assert part["images"] == QUICK.precision_images
    assert [row["precision"] for row in part["rows"]] == ["fp16", "bf16"]
    for row in part["rows"]:
        assert 0 <= row["mean_steps"] <= row["max_steps"]
        assert 0 <= row["alpha_mean_steps"] <= row["alpha_max_steps"]
        assert 0 <= row["alpha_differing_fraction"] <= 1


def test_throughput_times_every_eager_case_and_says_why_compile_is_not(quick) -> None:
    rows = quick[2]["sections"]["throughput"]["rows"]
    eager = [row for row in rows if not row["compiled"]]
    assert [(row["precision"], row["batch_size"]) for row in eager] == [
        (precision, batch) for precision in PRECISIONS for batch in QUICK.batch_sizes
    ]
    for row in eager:
        assert (row["error"], row["skipped"]) == (None, None)
        assert row["images_per_s"] > 0
        assert row["peak_memory_gib"] is None  # CPU: no CUDA allocator to ask
    compiled = [row for row in rows if row["compiled"]]
    assert [row["precision"] for row in compiled] == list(PRECISIONS)
    assert all(row["skipped"] and row["images_per_s"] is None for row in compiled)


def test_the_gpu_loop_gives_every_image_its_result(quick) -> None:
    oom = quick[2]["sections"]["oom"]
    assert oom["images_with_results"] == oom["requested_batch"] == QUICK.oom_images
    assert oom["errors"] == []
    # No memory cap on a CPU: the batch runs whole.
    assert oom["memory_cap_gib"] is None
    assert (oom["split"], oom["limit_after"]) == (False, QUICK.oom_images)
    assert oom["batches_run"] == {str(QUICK.oom_images): 1}


def test_a_job_s_device_work_is_timed_alone_and_beside_running_batches(quick) -> None:
    overlap = quick[2]["sections"]["overlap"]
    assert (overlap["device"], overlap["batch_size"]) == ("cpu", QUICK.worker_batch)
    assert overlap["image"] == f"{QUICK.e2e_image_side}x{QUICK.e2e_image_side}"
    assert overlap["batch_ms"] > 0
    assert [row["step"] for row in overlap["rows"]] == ["prepare", "alpha_to_host"]
    for row in overlap["rows"]:
        assert row["alone_ms"] > 0
        assert row["beside_batch_ms"] > 0


def test_end_to_end_is_compared_with_the_model_alone(quick) -> None:
    sections = quick[2]["sections"]
    e2e = sections["end_to_end"]
    assert e2e["succeeded"] == e2e["jobs"] == QUICK.e2e_jobs
    assert e2e["job_processes"] == 1  # what a worker on the CPU runs
    assert (e2e["precision"], e2e["max_batch_size"]) == (
        QUICK.worker_precision,
        QUICK.worker_batch,
    )
    (model,) = [
        row
        for row in sections["throughput"]["rows"]
        if (row["precision"], row["compiled"], row["batch_size"])
        == (QUICK.worker_precision, False, QUICK.worker_batch)
    ]
    assert e2e["model_images_per_s"] == model["images_per_s"]
    assert e2e["ratio_to_model"] == round(e2e["jobs_per_s"] / model["images_per_s"], 3)
    assert {"decode", "inference", "encode", "upload"} <= set(e2e["median_stage_ms"])


def test_with_no_time_left_each_part_is_skipped_and_says_why(tmp_path: Path) -> None:
    lines, path, report = _check(
        "--device", "cpu", "--quick", "--time-limit", "0", "--out", str(tmp_path)
    )
    assert lines[-1] == f"report: {path}"
    assert list(report["sections"]) == PARTS
    for part in report["sections"].values():
        assert part["status"] == "skipped"
        assert part["reason"] == "time limit reached"
    assert report["check"]["failed"] == []
