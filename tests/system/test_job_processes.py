"""A real `toonq worker` of several processes (`TOONQ_JOB_PROCESSES`): the model process and its
job processes, on PostgreSQL, Redis and an S3 server over HTTP. It runs jobs in every job process
under the worker's one name, batches them in the one GPU loop, answers the probes and the
metrics for all of them, and stops as one."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import Cluster
from tests.conftest import StartCluster
from tests.support import log_lines, matte_one, png_bytes
from toonq.producer import SubmitRequest, ToonqClient
from toonq.shared.job import JobParams, JobStatus
from toonq.shared.queue import create_celery_app
from toonq.shared.settings import Settings
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.weights import load_model
from toonq.worker.harness.worker import WorkerProcess

WORKER = "split-worker"
JOBS = 16
WAIT_S = 120


@pytest.fixture(scope="module")
def system(start_cluster: StartCluster) -> Cluster:
    return start_cluster(
        WORKER,
        TOONQ_JOB_PROCESSES="2",
        # A batch takes 100 ms: jobs wait for the model, and both job processes take some.
        TOONQ_MODEL="standin:100",
        TOONQ_RESOLUTION="64",
        TOONQ_CONCURRENCY="4",
        TOONQ_MAX_BATCH_SIZE="4",
        TOONQ_SWEEP_INTERVAL_S="0",
    )


def scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = scrape(f"http://127.0.0.1:{worker.port}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def job_process_pids(pid: int) -> list[int]:
    """The job processes of the worker `pid`: its children spawned to run a target (not, say,
    multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def test_jobs_run_in_every_job_process_and_count_as_one_worker(system: Cluster) -> None:
    worker = system.worker(WORKER)
    uris = [system.put_input(f"split-{n}.png", png_bytes((96, 80))) for n in range(JOBS)]
    job_ids = system.submit(uris)
    system.wait_until_final(timeout_s=WAIT_S)

    records = system.records()
    assert {
        (records[job].status, records[job].worker, records[job].attempts) for job in job_ids
    } == {(JobStatus.SUCCEEDED, WORKER, 1)}
    # Each job process is a Celery node of its own, and each ran some of the jobs.
    app = create_celery_app(Settings.from_env(system.env))
    stats = app.control.inspect(timeout=5).stats() or {}
    ran = {node: sum(node_stats.get("total", {}).values()) for node, node_stats in stats.items()}
    assert set(ran) == {f"toonq0@{WORKER}", f"toonq1@{WORKER}"}
    assert all(count > 0 for count in ran.values())
    assert sum(ran.values()) == JOBS

    # The job processes' counters, summed, on the model process's endpoint, with its own.
    succeeded = ("toonq_jobs_total", (("error_code", ""), ("status", "succeeded")))
    deadline = time.monotonic() + 5
    while (found := samples(worker)).get(succeeded, 0) < JOBS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found[succeeded] == JOBS
    assert found[("toonq_job_stage_seconds_count", (("stage", "total"),))] == JOBS
    assert found[("toonq_batch_size_count", ())] >= 1
    assert found[("toonq_batch_size_sum", ())] == JOBS
    assert found[("toonq_jobs_in_flight", ())] == 0
    assert found[("toonq_memory_budget_bytes", ())] > 0
    assert found[("toonq_max_batch_size", ())] == 4
    assert found[("toonq_worker_ready", ())] == 1
    assert scrape(f"http://127.0.0.1:{worker.port}/readyz")[0] == 200
    assert scrape(f"http://127.0.0.1:{worker.port}/livez")[0] == 200


def test_sigusr1_writes_the_threads_of_every_process(system: Cluster) -> None:
    dump = system.worker(WORKER).threads()
    assert "in _run_batches" in dump  # the model process's GPU loop (faulthandler)
    # Each job process's (Celery's dump, one section per thread, by name).
    assert sum(line.strip() == "toonq-model-link" for line in dump.splitlines()) == 2


def test_a_job_process_that_dies_takes_the_worker_down_with_status_1(system: Cluster) -> None:
    with system.start_worker("doomed", TOONQ_QUEUE=system.new_queue("doomed")) as worker:
        worker.wait_ready()
        victim, _other = job_process_pids(worker.process.pid)
        os.kill(victim, signal.SIGKILL)
        assert worker.process.wait(timeout=60) == 1
    assert "job_process_died" in worker.log_path.read_text()


def test_sigterm_stops_every_process(system: Cluster) -> None:
    with system.start_worker("leaving", TOONQ_QUEUE=system.new_queue("leaving")) as worker:
        worker.wait_ready()
        children = job_process_pids(worker.process.pid)
        assert len(children) == 2
        assert worker.stop(timeout_s=60) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_job_processes_outliving_their_model_process_stop(system: Cluster) -> None:
    with system.start_worker("orphaned", TOONQ_QUEUE=system.new_queue("orphaned")) as worker:
        worker.wait_ready()
        children = job_process_pids(worker.process.pid)
        worker.kill()
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            assert time.monotonic() < deadline, "job processes outlived their model process"
            time.sleep(0.2)


def test_a_model_process_that_prepares_images_makes_the_same_cut_outs(system: Cluster) -> None:
    # Composited, resized and normalised in the model process, alpha mattes made there: the
    # bytes a single-process engine makes of the same inputs and parameters.
    settings = {"TOONQ_QUEUE": system.new_queue("whole"), "TOONQ_MODEL": "random:tiny"}
    inputs = {
        colour: png_bytes((96 + 8 * n, 80)) for n, colour in enumerate(["#808080", "#ff0037"])
    }
    with (
        system.start_worker("whole", TOONQ_PREPARE_IN="model-process", **settings) as worker,
        ToonqClient(Settings.from_env(system.env | settings)) as client,
    ):
        worker.wait_ready()
        jobs = client.submit_many(
            SubmitRequest(
                input_uri=system.put_input(f"whole-{colour}.png", data),
                bg_color=colour,
                resolution=64,
            )
            for colour, data in inputs.items()
        )
        done = [client.wait(job.id, timeout=WAIT_S) for job in jobs]
        outputs = [client.objects.get(job.output_uri, max_bytes=1 << 22) for job in done]
    assert all(job.status is JobStatus.SUCCEEDED for job in done)
    (ready,) = [line for line in log_lines(worker) if line["event"] == "model_process_ready"]
    assert ready["prepare_in"] == "model-process"
    engine = MattingEngine(load_model("random:tiny"), device="cpu", resolution=64)
    for (colour, data), output in zip(inputs.items(), outputs, strict=True):
        params = JobParams(bg_color=colour, format="png", resolution=64)
        assert output == matte_one(engine, data, params).data
