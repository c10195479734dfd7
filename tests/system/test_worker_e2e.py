"""The system end to end with real parts: PostgreSQL, Redis, an S3 server over HTTP (moto, behind
a fault-injecting proxy) and a real `toonq worker` process running a tiny random model on CPU."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import Cluster
from tests.conftest import StartCluster
from tests.support import png_bytes, run_json, run_toonq, wait_for_log
from toonq.producer import ToonqClient
from toonq.shared.job import EventKind, JobStatus
from toonq.shared.queue import create_celery_app, enqueue
from toonq.shared.settings import Settings

WAIT_S = 120
WORKER = "e2e-worker"
#: The shortest allowed: twice kombu's BRPOP timeout.
REDIS_SOCKET_TIMEOUT_S = 2


def read_output(system: Cluster, uri: str) -> Image.Image:
    return Image.open(io.BytesIO(system.client.objects.get(uri, max_bytes=1 << 30)))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toonq.worker.engine.weights import random_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    random_model("tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def system(start_cluster: StartCluster, tiny_model_dir: Path) -> Cluster:
    """One worker, `WORKER`, running the tiny model saved in `tiny_model_dir`."""
    return start_cluster(
        WORKER,
        TOONQ_MODEL=str(tiny_model_dir),
        TOONQ_RESOLUTION="64",
        TOONQ_MAX_ATTEMPTS="3",
        TOONQ_RETRY_BACKOFF_MAX_S="0.5",
        TOONQ_SWEEP_INTERVAL_S="0",
        TOONQ_REDIS_SOCKET_TIMEOUT_S=str(REDIS_SOCKET_TIMEOUT_S),
    )


def test_jobs_still_running_after_the_wait_are_reported_with_the_workers_threads(
    start_cluster: StartCluster,
) -> None:
    stuck = start_cluster(
        "stuck-worker",
        TOONQ_MODEL="standin:20000",  # a batch takes 20 s
        TOONQ_RESOLUTION="64",
        TOONQ_SWEEP_INTERVAL_S="0",
        TOONQ_SHUTDOWN_GRACE_S="1",
    )
    stuck.client.submit(stuck.put_input("slow.png", png_bytes((64, 64))))

    with pytest.raises(TimeoutError) as raised:
        stuck.wait_until_final(timeout_s=3)

    message = str(raised.value)
    assert message.startswith("1 jobs still unfinished after 3 s")
    assert "--- the threads of " in message
    assert "standin.py" in message  # the GPU loop, in the stand-in model's batch


def test_happy_path_writes_an_rgba_cutout_of_the_input_size(system: Cluster) -> None:
    uri = system.put_input("happy.png", png_bytes((200, 150)))
    job = system.client.submit(uri)
    assert job.output_uri == f"{system.client.settings.output_prefix}/{job.id}.png"

    done = system.client.wait(job.id, timeout=WAIT_S)

    assert done.status == JobStatus.SUCCEEDED
    assert (done.attempts, done.error_code, done.worker) == (1, None, WORKER)
    assert (done.image_width, done.image_height) == (200, 150)
    assert done.model_name == str(system.client.settings.model)
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.started_at <= done.finished_at
    assert set(done.timings or {}) >= {"download", "decode", "inference", "encode", "upload"}
    output = read_output(system, done.output_uri)
    assert (output.format, output.mode, output.size) == ("PNG", "RGBA", (200, 150))
    assert system.event_kinds(job.id) == [EventKind.CREATED, EventKind.STARTED, EventKind.SUCCEEDED]


def test_an_idle_worker_outlasting_its_redis_socket_timeout_still_consumes(
    system: Cluster,
) -> None:
    # Idle for several socket timeouts: the worker's BRPOP waits must not time its reads out.
    time.sleep(3 * REDIS_SOCKET_TIMEOUT_S)
    job = system.client.submit(system.put_input("idle.png", png_bytes()))

    assert system.client.wait(job.id, timeout=WAIT_S).status == JobStatus.SUCCEEDED


def test_the_same_message_delivered_twice_is_processed_once(system: Cluster) -> None:
    job = system.client.submit(system.put_input("twice.png", png_bytes()))
    app = create_celery_app(system.client.settings)
    enqueue(app, job.id, queue=system.client.settings.queue)  # a duplicate of the submit's message

    done = system.client.wait(job.id, timeout=WAIT_S)
    wait_for_log(
        system.worker(WORKER),
        lambda line: line.get("event") == "job_skipped" and line.get("job_id") == str(job.id),
    )

    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 1
    assert system.event_kinds(job.id).count(EventKind.STARTED) == 1


def test_a_transient_s3_failure_is_retried_then_succeeds(system: Cluster) -> None:
    uri = system.put_input("flaky.png", png_bytes())
    system.proxy.fail_next_gets("/in/flaky.png", failures=2)

    done = system.client.wait(system.client.submit(uri).id, timeout=WAIT_S)

    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 3
    events = system.client.events(done.id)
    retried = [event for event in events if event.kind == EventKind.RETRIED]
    assert len(retried) == 2
    assert all(
        (event.details or {}).get("error_code") == "storage_unavailable" for event in retried
    )


def test_retries_stop_at_max_attempts_with_the_last_error(system: Cluster) -> None:
    uri = system.put_input("down.png", png_bytes())
    system.proxy.fail_next_gets("/in/down.png", failures=10)

    done = system.client.wait(system.client.submit(uri).id, timeout=WAIT_S)

    assert done.status == JobStatus.FAILED
    assert (done.attempts, done.error_code) == (3, "storage_unavailable")
    assert "gave up after 3 attempts" in (done.error_message or "")


def test_permanent_failures_fail_at_once_and_the_worker_goes_on(system: Cluster) -> None:
    missing = system.client.submit(system.input_uri("no-such-object.png"))
    corrupt = system.client.submit(system.put_input("corrupt.png", png_bytes()[:60]))
    good = system.client.submit(system.put_input("after.png", png_bytes()))

    results = {
        job.id: system.client.wait(job.id, timeout=WAIT_S) for job in (missing, corrupt, good)
    }

    assert (results[missing.id].status, results[missing.id].error_code) == (
        "failed",
        "input_not_found",
    )
    assert (results[corrupt.id].status, results[corrupt.id].error_code) == (
        "failed",
        "invalid_image",
    )
    assert results[missing.id].attempts == results[corrupt.id].attempts == 1
    assert results[good.id].status == JobStatus.SUCCEEDED


def test_a_job_cancelled_before_it_starts_is_never_processed(system: Cluster) -> None:
    # Submitted on a queue no worker reads, so it cannot start before the cancel.
    parked = ToonqClient(
        Settings.from_env(system.env | {"TOONQ_QUEUE": system.new_queue("parked")})
    )
    job = parked.submit(system.put_input("cancel.png", png_bytes()))
    cancelled = system.client.cancel(job.id, reason="changed my mind")
    assert cancelled.status == JobStatus.CANCELLED

    # Its message now reaches the worker anyway (say, a late redelivery): nothing happens.
    enqueue(create_celery_app(system.client.settings), job.id, queue=system.client.settings.queue)
    wait_for_log(
        system.worker(WORKER),
        lambda line: line.get("event") == "job_skipped" and line.get("job_id") == str(job.id),
    )

    after = system.client.get(job.id)
    assert (after.status, after.attempts, after.started_at) == ("cancelled", 0, None)
    assert system.event_kinds(job.id) == [EventKind.CREATED, EventKind.CANCELLED]
    with pytest.raises(Exception, match="does not exist"):
        system.client.objects.get(after.output_uri, max_bytes=1 << 20)


def test_requeue_failed_jobs_by_id_and_by_filter_with_dry_run(system: Cluster) -> None:
    first = system.client.submit(system.input_uri("late-1.png"))
    second = system.client.submit(system.input_uri("late-2.png"))
    for job in (first, second):
        assert system.client.wait(job.id, timeout=WAIT_S).error_code == "input_not_found"
    system.put_input("late-1.png", png_bytes())
    system.put_input("late-2.png", png_bytes())
    env = system.env

    # By id.
    requeued = run_json("requeue", str(first.id), env=env)
    assert [job["id"] for job in requeued["requeued"]] == [str(first.id)]
    assert system.client.wait(first.id, timeout=WAIT_S).status == JobStatus.SUCCEEDED

    # By filter, first as a dry run that changes nothing. input_not_found is permanent: a filter
    # skips it unless asked to include it.
    since = first.created_at.isoformat()
    flags = ["--status", "failed", "--error-code", "input_not_found", "--since", since]
    assert [job["id"] for job in run_json("requeue", *flags, env=env)["skipped"]] == [
        str(second.id)
    ]
    flags.append("--include-permanent")
    preview = run_json("requeue", *flags, "--dry-run", env=env)
    assert [job["id"] for job in preview["requeued"]] == [str(second.id)]
    assert system.client.get(second.id).status == JobStatus.FAILED

    requeued = run_json("requeue", *flags, env=env)
    assert [job["id"] for job in requeued["requeued"]] == [str(second.id)]
    done = system.client.wait(second.id, timeout=WAIT_S)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 1)
    assert EventKind.REQUEUED in system.event_kinds(second.id)


def test_cli_submit_wait_and_status_print_the_json_contract(system: Cluster) -> None:
    uri = system.put_input("cli.png", png_bytes())
    submitted = run_json(
        "submit", uri, "--idempotency-key", "cli-1", "--wait", "--timeout", "120", env=system.env
    )
    assert isinstance(submitted, dict)
    contract = {
        "id", "status", "input_uri", "output_uri", "attempts", "error_code", "error_message",
        "created_at", "started_at", "finished_at", "worker", "model",
    }  # fmt: skip
    assert contract <= set(submitted)
    assert submitted["status"] == "succeeded"

    status = run_json("status", submitted["id"], env=system.env)
    assert isinstance(status, dict)
    assert status["id"] == submitted["id"]
    assert [event["kind"] for event in status["events"]] == ["created", "started", "succeeded"]

    listed = run_json("jobs", "--status", "succeeded", "--limit", "500", env=system.env)
    assert submitted["id"] in {job["id"] for job in listed}

    again = run_toonq("submit", uri, "--idempotency-key", "cli-1", "--json", env=system.env)
    assert again.returncode == 0
    assert '"id": "' + submitted["id"] in again.stdout


def test_a_job_whose_worker_dies_is_reclaimed_by_another_worker(system: Cluster) -> None:
    settings = {
        "TOONQ_QUEUE": system.new_queue("lost"),
        "TOONQ_LEASE_SECONDS": "3",
        "TOONQ_SWEEP_INTERVAL_S": "1",
    }
    doomed = system.start_worker("doomed", **settings)
    doomed.wait_ready()
    uri = system.put_input("slow.png", png_bytes())
    system.proxy.hold_next_get("/in/slow.png", seconds=20)  # the first download hangs
    with ToonqClient(Settings.from_env(system.env | settings)) as client:
        job = client.submit(uri)
        wait_for_log(
            doomed,
            lambda line: line.get("event") == "job_started" and line.get("job_id") == str(job.id),
        )
        doomed.kill()  # SIGKILL mid-job: nothing gets recorded, the message is unacked
        assert client.get(job.id).status == JobStatus.RUNNING

        with system.start_worker("rescuer", **settings):
            done = client.wait(job.id, timeout=WAIT_S)
        kinds = [event.kind for event in client.events(job.id)]

    assert (done.status, done.worker, done.attempts) == (JobStatus.SUCCEEDED, "rescuer", 2)
    assert kinds == [
        EventKind.CREATED,
        EventKind.STARTED,
        EventKind.RECLAIMED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]


def test_a_slow_job_keeps_its_lease_and_runs_once(system: Cluster) -> None:
    settings = {
        "TOONQ_QUEUE": system.new_queue("slow"),
        "TOONQ_LEASE_SECONDS": "2",  # the download below takes four leases
        "TOONQ_SWEEP_INTERVAL_S": "1",
    }
    # Two workers: were the lease to lapse, the idle one would take the job over.
    workers = [system.start_worker(name, **settings) for name in ("w1", "w2")]
    uri = system.put_input("slower.png", png_bytes())
    system.proxy.hold_next_get("/in/slower.png", seconds=8)
    try:
        for worker in workers:
            worker.wait_ready()
        with ToonqClient(Settings.from_env(system.env | settings)) as client:
            done = client.wait(client.submit(uri).id, timeout=WAIT_S)
            kinds = [event.kind for event in client.events(done.id)]
    finally:
        for worker in workers:
            worker.stop()

    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 1)
    assert kinds == [EventKind.CREATED, EventKind.STARTED, EventKind.SUCCEEDED]


def _scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_running_worker_serves_its_probes_and_the_metrics_of_the_jobs_it_ran(
    system: Cluster,
) -> None:
    queue = {"TOONQ_QUEUE": system.new_queue("metrics")}
    with system.start_worker("metrics", TOONQ_METRICS_QUEUE_DEPTH="1", **queue) as worker:
        worker.wait_ready()
        base = f"http://127.0.0.1:{worker.port}"
        assert _scrape(f"{base}/readyz")[0] == 200
        assert _scrape(f"{base}/livez")[0] == 200
        with ToonqClient(Settings.from_env(system.env | queue)) as client:
            ok = client.submit(system.put_input("metrics-ok.png", png_bytes()))
            bad = client.submit(system.put_input("metrics-bad.png", b"not an image"))
            for job in (ok, bad):
                client.wait(job.id, timeout=WAIT_S)
        # A job's outcome is counted just after the database has it: read again until both are.
        jobs = "toonq_jobs_total"
        succeeded = (jobs, (("error_code", ""), ("status", "succeeded")))
        failed = (jobs, (("error_code", "unsupported_format"), ("status", "failed")))
        deadline = time.monotonic() + 5
        while True:
            status, text = _scrape(f"{base}/metrics")
            samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            counted = samples.get(succeeded, 0) + samples.get(failed, 0)
            if status != 200 or counted >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    assert status == 200
    assert samples[succeeded] == 1
    assert samples[failed] == 1
    for stage in ("queue_wait", "download", "decode", "inference", "encode", "upload", "total"):
        assert samples[("toonq_job_stage_seconds_count", (("stage", stage),))] >= 1
    assert samples[("toonq_batch_size_count", ())] >= 1
    assert samples[("toonq_worker_ready", ())] == 1
    assert samples[("toonq_model_load_seconds", ())] > 0
    depths = {labels: v for (name, labels), v in samples.items() if name == "toonq_queue_depth"}
    assert len(depths) == 4  # the queue's four priority lists, all drained
    assert set(depths.values()) == {0}
