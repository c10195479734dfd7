"""`toonq bench` runs the sections it is asked for and writes its reports; never a speed test."""

from __future__ import annotations

import functools
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL
from tests.support import run_toonq
from toonq.worker.bench.machine import describe_machine
from toonq.worker.bench.model import measure
from toonq.worker.bench.report import PIPELINE_EFFICIENCY, Section, write_report
from toonq.worker.bench.throughput import steady_rate
from toonq.worker.cpus import usable_cpus
from toonq.worker.engine.encode import default_png_encoder
from toonq.worker.engine.weights import LoadedModel

# One OpenMP thread: on a busy two-core machine, two threads wait on each other for seconds.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "TOONQ_LOG_FORMAT": "json"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    out = tmp_path_factory.mktemp("bench") / "reports"
    result = run_toonq(
        "bench", "--quick", "--sections", "model,stages", "--out", str(out),
        env=os.environ | QUIET_ENV, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return (
        result.stdout.strip().splitlines(),
        out,
        Path(result.stdout.split("report: ")[-1].strip()),
    )


def test_prints_the_machine_first_and_the_report_path_last(quick_run):
    lines, out, report = quick_run
    assert lines[0].startswith("machine: CPU ")
    assert lines[-1] == f"report: {report}"
    assert report.parent == out
    assert report.suffix == ".json"
    assert report.with_suffix(".md").exists()


def test_json_report_holds_the_machine_and_each_section(quick_run):
    _, _, path = quick_run
    report = json.loads(path.read_text())
    # Without the pipeline section there are no efficiency ratios to copy to the top level.
    assert set(report) == {"machine", "sections"}
    assert list(report["sections"]) == ["model", "stages"]
    machine = report["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["torch"] == torch.__version__
    assert machine["pillow"]
    assert "cuda_device" not in machine or torch.cuda.is_available()


def test_model_section_times_each_configuration(quick_run):
    _, _, path = quick_run
    model = json.loads(path.read_text())["sections"]["model"]
    assert model["model"] == ("random:toonout" if torch.cuda.is_available() else "random:tiny")
    (row,) = model["rows"]  # --quick: one precision, eager, batch 1
    assert (row["compiled"], row["batch_size"], row["error"]) == (False, 1, None)
    assert row["images_per_s"] > 0
    assert row["relative"] == 1.0
    assert row["ms_per_image"] == pytest.approx(1000 / row["images_per_s"], rel=1e-2)


def test_stages_section_covers_every_stage_image_and_encoding(quick_run):
    _, _, path = quick_run
    stages = json.loads(path.read_text())["sections"]["stages"]
    rows = stages["rows"]
    assert stages["png_encoder"] == default_png_encoder()
    assert {row["stage"] for row in rows} == {"decode", "preprocess", "postprocess", "encode"}
    images = {row["image"] for row in rows}
    assert len(images) == 4  # anime and photo, two sizes each
    for image in images:
        for stage in ("decode", "preprocess", "postprocess", "encode"):
            first, *_ = [row for row in rows if row["image"] == image and row["stage"] == stage]
            assert first["relative"] == 1.0
    encodings = [row for row in rows if row["stage"] == "encode"]
    assert all(row["bytes"] > 0 and row["ms_per_megapixel"] > 0 for row in encodings)
    cases = {row["case"] for row in encodings}
    assert {"png pillow level 6", f"png {default_png_encoder()} level 1"} <= cases
    assert any(case.startswith("webp lossless") for case in cases)
    decodes = {row["case"] for row in rows if row["stage"] == "decode"}
    assert decodes == {"png", "jpeg", "webp"}
    jobs = stages["job_cpu"]
    assert {job["image"] for job in jobs} == images
    for job in jobs:
        assert job["job_ms"] > 0
        assert job["codec_floor_ms"] > 0
        assert job["ratio"] == pytest.approx(job["job_ms"] / job["codec_floor_ms"], rel=1e-2)


def test_markdown_report_has_a_part_per_section(quick_run):
    _, _, path = quick_run
    markdown = path.with_suffix(".md").read_text()
    assert "## Model throughput" in markdown
    assert "## CPU cost per stage" in markdown
    assert "| png pillow level 6 |" in markdown
    assert "| job on the CPU |" in markdown


def test_unknown_sections_are_refused_before_anything_runs(tmp_path):
    result = run_toonq(
        "bench", "--sections", "model,nope", "--out", str(tmp_path), env=os.environ | QUIET_ENV
    )
    assert result.returncode == 2
    assert "nope" in result.stderr
    assert not list(tmp_path.iterdir())


def test_pipeline_efficiency_is_copied_to_the_top_level(tmp_path):
    efficiency = {"1": 0.93, "4": 0.88}
    sections = [
        Section("stages", "Stages", {"rows": []}, ""),
        Section("pipeline", "Pipeline", {PIPELINE_EFFICIENCY: efficiency, "runs": []}, "x"),
    ]
    path = write_report(sections, describe_machine(), out_dir=tmp_path)
    report = json.loads(path.read_text())
    assert report[PIPELINE_EFFICIENCY] == efficiency
    assert report["sections"]["pipeline"][PIPELINE_EFFICIENCY] == efficiency


def test_a_compile_failure_is_a_row_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_backend(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> None:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=failing_backend))
    loaded = LoadedModel(torch.nn.Conv2d(3, 1, 1), name="conv", revision=None)
    row = measure(loaded, "cpu", "fp32", True, 1, 32, repeat=1)
    assert (row.images_per_s, row.ms_per_image) == (None, None)
    assert row.error is not None
    assert "no compiler here" in row.error


def test_steady_rate_fits_batched_completions_and_leaves_out_fill_and_drain() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # Batches of 4 complete every second; then a slow tail as the pipeline drains.
    steps = [start + timedelta(seconds=1 + i // 4, milliseconds=10 * (i % 4)) for i in range(40)]
    tail = [steps[-1] + timedelta(seconds=5 * (i + 1)) for i in range(4)]
    rate = steady_rate([start, *steps, *tail], fill=1, drain=4)
    assert rate == pytest.approx(4.0, rel=0.1)
    with pytest.raises(ValueError, match="too few"):
        steady_rate(steps[:4], fill=1, drain=1)


@pytest.fixture(scope="module")
def system_sections(pg_server, tmp_path_factory: pytest.TempPathFactory):
    """The sections that run real workers, on the test servers (a database and queue of their
    own, removed afterwards)."""
    return _quick_sections_on_test_servers("queue,scaling", tmp_path_factory)


def _quick_sections_on_test_servers(
    sections: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """`toonq bench --quick` of `sections` on the test servers; the report's sections."""
    out = tmp_path_factory.mktemp("bench-system") / "reports"
    env = (
        os.environ
        | QUIET_ENV
        | {
            "TOONQ_BENCH_POSTGRES_URL": POSTGRES_ADMIN_URL,
            "TOONQ_BENCH_REDIS_URL": REDIS_URL,
        }
    )
    result = run_toonq(
        "bench", "--quick", "--sections", sections, "--out", str(out), env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    report = Path(result.stdout.split("report: ")[-1].strip())
    sections_data: dict[str, Any] = json.loads(report.read_text())["sections"]
    return sections_data


def test_queue_section_sets_toonq_against_a_bare_celery_task(system_sections):
    runs = system_sections["queue"]["runs"]
    cpus = usable_cpus()
    assert [(run["jobs_in_flight"], run["job_processes"]) for run in runs] == [(1, 1), (18, 1)] + (
        [(18, cpus)] if cpus > 1 else []
    )
    for run in runs:
        assert run["succeeded"] == run["jobs"]
        assert run["ms_per_job"] == pytest.approx(1000 / run["jobs_per_s"], rel=0.02)
        assert run["cpu_ms_per_job"] > 0
        assert run["context_switches_per_job"] > 0  # a job's thread waits for its batch
        assert 0 < run["machine_busy"] <= 1
        # The worker's own CPU time is part of the machine's (ticks of 10 ms either way).
        assert run["machine_cpu_ms_per_job"] >= 0.9 * run["cpu_ms_per_job"]
        assert run["bare_celery_ms_per_task"] > 0
        assert run["overhead_ratio"] == pytest.approx(
            run["ms_per_job"] / run["bare_celery_ms_per_task"], rel=0.02
        )


def test_scaling_section_projects_from_what_it_measured(system_sections):
    scaling = system_sections["scaling"]
    runs = scaling["runs"]
    assert all(run["succeeded"] == run["jobs"] for run in runs)
    assert all(run["machine_cpu_ms_per_job"] >= 0.9 * run["cpu_ms_per_job"] for run in runs)
    two_cores = len(os.sched_getaffinity(0)) > 1
    assert {(run["cores"], run["job_processes"]) for run in runs if run["image"] == "1 MP"} == (
        {(1, 1), (2, 1), (2, 2)} if two_cores else {(1, 1)}
    )
    assert (scaling["machine_two_core_speedup"] is not None) == two_cores
    assert (scaling["two_core_speedup_job_processes"] is not None) == two_cores
    assert scaling["cpu_over_codec_floor"] == pytest.approx(
        scaling["cpu_ms_per_job_1mp"] / scaling["codec_floor_ms_1mp"], rel=0.01
    )
    cpu_ms, gil_ms = scaling["cpu_ms_per_job_1mp"], scaling["gil_ms_per_job"]
    projection = scaling["projected_jobs_per_s_1mp"]
    assert list(projection) == ["1", "2", "4", "8", "16", "32"]
    for n, jobs_per_s in projection.items():
        assert jobs_per_s == pytest.approx(min(int(n) * 1000 / cpu_ms, 1000 / gil_ms), rel=0.01)


@pytest.fixture(scope="module")
def animation_section(pg_server, tmp_path_factory: pytest.TempPathFactory):
    return _quick_sections_on_test_servers("animation", tmp_path_factory)["animation"]


def test_animation_section_sets_animations_against_their_frames_as_stills(animation_section):
    runs = animation_section["worker"]
    assert [(run["input"], run["model"]) for run in runs] == [
        ("png stills", "standin:0"),
        ("gif", "standin:0"),
        ("apng", "standin:0"),
    ]
    stills, *animations = runs
    assert stills["frames_per_job"] == 1
    assert {run["frames_per_job"] for run in animations} == {animation_section["frames"]}
    for run in runs:
        assert run["succeeded"] == run["jobs"] > 0
        assert run["jobs"] * run["frames_per_job"] == stills["jobs"]  # as many frames in all
        assert run["frames_per_s"] == pytest.approx(
            run["jobs_per_s"] * run["frames_per_job"], rel=0.01
        )
        assert run["relative_to_stills"] == pytest.approx(
            run["frames_per_s"] / stills["frames_per_s"], rel=0.01
        )
        assert run["cpu_ms_per_frame"] > 0


def test_animation_section_times_each_container_per_frame(animation_section):
    codecs = {(row["step"], row["container"]): row for row in animation_section["codecs"]}
    assert set(codecs) == {
        ("decode", "gif"),
        ("decode", "apng"),
        ("decode", "webp"),
        ("encode", "apng"),
        ("encode", "webp lossless"),
        ("encode", "webm vp9 + alpha"),
    }
    assert all(row["ms_per_frame"] > 0 and row["bytes"] > 0 for row in codecs.values())
