"""Worker metrics and health endpoints, scraped over real HTTP and parsed by prometheus-client's own
parser; the queue depth is read from a real Redis, the dashboard checked against the metrics."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry, Counter

from tests.support import get, scrape
from toonq.shared.job import Outcome
from toonq.shared.queue import queue_lists
from toonq.worker.health import Health, HealthServer, serve
from toonq.worker.metrics import (
    JOB_STATUSES,
    GpuMemoryCollector,
    QueueDepthCollector,
    WorkerMetrics,
    printable_list_name,
)

DASHBOARD = Path(__file__).parents[2] / "docker" / "grafana" / "toonq-dashboard.json"


# --- Health endpoints -----------------------------------------------------------------------------


def test_readyz_follows_the_worker_into_and_out_of_service(
    health: Health, server: HealthServer
) -> None:
    assert get(server, "/readyz") == (503, "not ready\n")
    assert scrape(server).value("toonq_worker_ready") == 0

    health.mark_ready()
    assert get(server, "/readyz") == (200, "ready\n")
    assert scrape(server).value("toonq_worker_ready") == 1

    health.mark_not_ready()  # a shutdown started
    assert get(server, "/readyz")[0] == 503
    assert scrape(server).value("toonq_worker_ready") == 0


def test_livez_fails_once_the_gpu_loop_stops_beating(registry: CollectorRegistry) -> None:
    health = Health(liveness_timeout_s=0.3, registry=registry)
    with serve(0, health, registry=registry, host="127.0.0.1") as server:
        # A worker still loading its model is alive for one timeout.
        assert get(server, "/livez") == (200, "alive\n")

        time.sleep(0.5)
        status, body = get(server, "/livez")
        assert status == 503
        assert body.startswith("no beat for")

        before = time.time()
        health.beat()
        after = time.time()
        assert get(server, "/livez")[0] == 200
        beat_at = scrape(server).value("toonq_worker_heartbeat_timestamp_seconds")
        assert beat_at is not None
        assert before <= beat_at <= after


def test_a_failed_device_is_neither_live_nor_ready_for_good(registry: CollectorRegistry) -> None:
    health = Health(registry=registry)
    with serve(0, health, registry=registry, host="127.0.0.1") as server:
        health.mark_ready()
        assert scrape(server).value("toonq_worker_device_failed") == 0

        health.mark_failed("5 failed batches in a row (the last: RuntimeError: CUDA error)")
        health.beat()  # the loop may still beat: the device stays failed
        health.mark_ready()  # nor does a late report of readiness (a job process's) undo it

        assert get(server, "/livez") == (
            503,
            "device failed: 5 failed batches in a row (the last: RuntimeError: CUDA error)\n",
        )
        assert get(server, "/readyz") == (503, "not ready\n")
        assert scrape(server).value("toonq_worker_device_failed") == 1
        assert scrape(server).value("toonq_worker_ready") == 0


def test_other_paths_are_not_found(server: HealthServer) -> None:
    assert get(server, "/")[0] == 404


# --- Metrics the worker records -------------------------------------------------------------------


def test_jobs_are_counted_by_status_and_error_code(
    worker_metrics: WorkerMetrics, server: HealthServer
) -> None:
    worker_metrics.record_job(Outcome.SUCCEEDED)
    worker_metrics.record_job(Outcome.FAILED, "input_not_found")
    worker_metrics.record_job(Outcome.FAILED, "input_not_found")
    worker_metrics.record_job(Outcome.RETRYING, "storage_unavailable")

    scraped = scrape(server)
    jobs = "toonq_jobs_total"
    assert scraped.value(jobs, status="succeeded", error_code="") == 1
    assert scraped.value(jobs, status="failed", error_code="input_not_found") == 2
    assert scraped.value(jobs, status="retrying", error_code="storage_unavailable") == 1
    # Outcomes without an error code are exported at zero before they happen, for rate().
    for status in ("skipped", "discarded", "rejected", "handed_back"):
        assert scraped.value(jobs, status=status, error_code="") == 0


def test_a_job_outcome_outside_the_contract_is_refused(worker_metrics: WorkerMetrics) -> None:
    with pytest.raises(ValueError, match="unknown job status"):
        worker_metrics.record_job("done")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no error code"):
        worker_metrics.record_job(Outcome.SUCCEEDED, "input_not_found")
    assert "succeeded" in JOB_STATUSES


def test_stage_timings_fill_one_histogram_per_stage(
    worker_metrics: WorkerMetrics, server: HealthServer
) -> None:
    worker_metrics.observe_stages({"download": 120.0, "inference": 40.0, "cache_lookup": 3.0})
    worker_metrics.observe_stages({"download": 80.0})

    scraped = scrape(server)
    stage_seconds = "toonq_job_stage_seconds"
    assert scraped.value(f"{stage_seconds}_count", stage="download") == 2
    assert scraped.value(f"{stage_seconds}_sum", stage="download") == pytest.approx(0.2)
    assert scraped.bucket(stage_seconds, 0.1, stage="download") == 1
    assert scraped.bucket(stage_seconds, 0.25, stage="download") == 2
    assert scraped.bucket(stage_seconds, 0.05, stage="inference") == 1
    assert scraped.value(f"{stage_seconds}_count", stage="upload") == 0
    # Timings outside the contract's stages stay in the job's row only.
    assert scraped.value(f"{stage_seconds}_count", stage="cache_lookup") is None


def test_batches_and_out_of_memory_splits(
    worker_metrics: WorkerMetrics, server: HealthServer
) -> None:
    worker_metrics.set_max_batch_size(8)
    for size in (3, 8, 8):
        worker_metrics.observe_batch(size)
    assert scrape(server).value("toonq_max_batch_size") == 8

    worker_metrics.record_oom_split(4)

    scraped = scrape(server)
    assert scraped.bucket("toonq_batch_size", 2) == 0
    assert scraped.bucket("toonq_batch_size", 4) == 1
    assert scraped.bucket("toonq_batch_size", 8) == 3
    assert scraped.value("toonq_batch_size_sum") == 19
    assert scraped.value("toonq_batch_oom_splits_total") == 1
    assert scraped.value("toonq_max_batch_size") == 4


def test_jobs_in_flight_are_counted_until_their_block_ends_however_it_ends(
    worker_metrics: WorkerMetrics, server: HealthServer
) -> None:
    with worker_metrics.in_flight():
        with worker_metrics.in_flight():
            assert scrape(server).value("toonq_jobs_in_flight") == 2
        with pytest.raises(RuntimeError), worker_metrics.in_flight():
            raise RuntimeError("job crashed")
        assert scrape(server).value("toonq_jobs_in_flight") == 1
    assert scrape(server).value("toonq_jobs_in_flight") == 0


def test_model_load_time(worker_metrics: WorkerMetrics, server: HealthServer) -> None:
    worker_metrics.set_model_load_seconds(12.5)
    assert scrape(server).value("toonq_model_load_seconds") == 12.5


# --- Read at scrape time --------------------------------------------------------------------------


def test_priority_lists_are_labelled_as_redis_cli_prints_them() -> None:
    assert printable_list_name("matting") == "matting"
    assert printable_list_name("matting\x06\x163") == "matting\\x06\\x163"


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_an_unreachable_redis_leaves_the_queue_depth_out_of_a_successful_scrape(
    down: str, silent_redis: str, worker_metrics: WorkerMetrics, server: HealthServer
) -> None:
    url = silent_redis if down == "silent" else "redis://127.0.0.1:1/0"
    worker_metrics.watch_queue_depth(url, queue_lists("matting"), timeout_s=0.2)

    started = time.monotonic()
    scrapes = [scrape(server) for _ in range(3)]
    assert time.monotonic() - started < 3 * 1.0  # bounded by the timeout, no retries

    assert all("toonq_queue_depth" not in scraped.names() for scraped in scrapes)
    errors = [
        scraped.value("toonq_metrics_scrape_errors_total", collector="queue_depth")
        for scraped in scrapes
    ]
    # Counted while a scrape runs: each scrape shows at least the failures before it.
    assert errors[1] is not None
    assert errors[1] >= 1
    assert errors[2] == errors[1] + 1


def test_gpu_memory_is_absent_off_cuda(worker_metrics: WorkerMetrics, server: HealthServer) -> None:
    worker_metrics.watch_gpu_memory(torch.device("cpu"))
    names = scrape(server).names()
    assert "toonq_gpu_memory_allocated_bytes" not in names
    assert "toonq_gpu_memory_reserved_bytes" not in names


def cuda_initialised() -> bool:
    return bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


def test_gpu_memory_waits_for_cuda_and_never_initialises_it(
    worker_metrics: WorkerMetrics, server: HealthServer
) -> None:
    if cuda_initialised():
        pytest.skip("CUDA was initialised by an earlier test in this process")
    worker_metrics.watch_gpu_memory(torch.device("cuda"))
    assert "toonq_gpu_memory_allocated_bytes" not in scrape(server).names()
    assert not cuda_initialised()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_reports_what_torch_holds_on_the_device(
    worker_metrics: WorkerMetrics, server: HealthServer
) -> None:
    device = torch.device("cuda")
    worker_metrics.watch_gpu_memory(device)
    tensor = torch.ones(1024, 1024, device=device)

    scraped = scrape(server)
    allocated = scraped.value("toonq_gpu_memory_allocated_bytes")
    reserved = scraped.value("toonq_gpu_memory_reserved_bytes")
    assert allocated is not None
    assert reserved is not None
    assert allocated >= tensor.numel() * tensor.element_size()
    assert reserved >= allocated


def test_the_metrics_modules_do_not_import_torch() -> None:
    # Only the GPU collector needs torch, and it uses the torch its caller already imported.
    code = "import sys, toonq.worker.health, toonq.worker.metrics; print('torch' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (imported.returncode, imported.stdout) == (0, "False\n"), imported.stderr


# --- Dashboard ------------------------------------------------------------------------------------

SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exported_samples() -> dict[str, str]:
    """Every sample name a worker can export, mapped to its metric family's name."""
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    Health(registry=registry)
    unused = Counter("unused", "", registry=None)
    families = [
        *registry.collect(),
        *GpuMemoryCollector(torch.device("cpu"), unused).describe(),
        *QueueDepthCollector("redis://127.0.0.1:1/0", [], unused).describe(),
    ]
    return {
        family.name + suffix: family.name
        for family in families
        for suffix in SAMPLE_SUFFIXES[family.type]
    }


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [variable["definition"] for variable in dashboard["templating"]["list"]]
    return expressions


def test_the_dashboard_charts_exactly_the_metrics_workers_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    samples = exported_samples()

    referenced = {
        name
        for expression in dashboard_expressions(dashboard)
        for name in re.findall(r"toonq_[a-z_]+", expression)
    }

    assert referenced - samples.keys() == set()
    assert {samples[name] for name in referenced} == set(samples.values())


def test_the_dashboard_reads_the_datasource_chosen_at_import() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [source["name"] for source in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in dashboard["panels"]:
        assert panel["datasource"] == datasource, panel["title"]
        assert all(target["datasource"] == datasource for target in panel["targets"])
