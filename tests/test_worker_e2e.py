"""The system end to end with real parts: PostgreSQL, Redis, an S3 server over HTTP (moto, behind
a fault-injecting proxy) and a real `toonq worker` process running a tiny random model on CPU."""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PostgresServer
from tests.servers import free_port
from tests.support import FaultyS3Proxy, WorkerProcess, base_env, png_bytes, run_json, run_toonq
from toonq.producer import ToonqClient
from toonq.shared.db.engine import migrate
from toonq.shared.job import EventKind, JobStatus
from toonq.shared.queue import create_celery_app, enqueue
from toonq.shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: A Redis database of its own: the module flushes it once at start.
REDIS_E2E_URL = os.environ.get("TOONQ_TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/14")
WAIT_S = 120


@dataclass
class System:
    env: dict[str, str]
    settings: Settings
    client: ToonqClient
    worker: WorkerProcess
    proxy: FaultyS3Proxy
    bucket: str

    def put_input(self, name: str, data: bytes) -> str:
        uri = f"s3://{self.bucket}/in/{name}"
        self.client.objects.put(uri, data, content_type="image/png")
        return uri

    def read_output(self, uri: str) -> Image.Image:
        return Image.open(io.BytesIO(self.client.objects.get(uri, max_bytes=1 << 30)))

    def kinds(self, job_id: uuid.UUID) -> list[str]:
        return [event.kind for event in self.client.events(job_id)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toonq.worker.engine.weights import random_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    random_model("tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def system(
    pg_server: PostgresServer,
    s3_server: str,
    s3_client: S3Client,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[System]:
    database_url = pg_server.create_database()
    migrate(database_url)
    redis.Redis.from_url(REDIS_E2E_URL).flushdb()
    bucket = f"toonq-e2e-{uuid.uuid4().hex[:8]}"
    with FaultyS3Proxy(s3_server).running() as proxy:
        env = base_env(
            TOONQ_DATABASE_URL=database_url,
            TOONQ_BROKER_URL=REDIS_E2E_URL,
            TOONQ_QUEUE=f"e2e-{uuid.uuid4().hex[:8]}",
            TOONQ_S3_ENDPOINT_URL=proxy.endpoint,
            TOONQ_S3_MAX_ATTEMPTS="1",  # every injected 503 reaches the job's retry logic
            TOONQ_OUTPUT_PREFIX=f"s3://{bucket}/out",
            TOONQ_MODEL=str(tiny_model_dir),
            TOONQ_RESOLUTION="64",
            TOONQ_DEVICE="cpu",
            TOONQ_MAX_ATTEMPTS="3",
            TOONQ_RETRY_BACKOFF_S="0.2",
            TOONQ_RETRY_BACKOFF_MAX_S="0.5",
            TOONQ_SWEEP_INTERVAL_S="0",
            TOONQ_LOG_FORMAT="json",
            TOONQ_WORKER_NAME="e2e-worker",
        )
        settings = Settings.from_env(env)
        client = ToonqClient(settings, actor="test")
        s3_client.create_bucket(Bucket=bucket)
        worker = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log")
        try:
            worker.wait_ready()
            yield System(env, settings, client, worker, proxy, bucket)
        finally:
            worker.stop()
            client.close()
            pg_server.drop_database(database_url)


def test_happy_path_writes_an_rgba_cutout_of_the_input_size(system: System) -> None:
    uri = system.put_input("happy.png", png_bytes((200, 150)))
    job = system.client.submit(uri)
    assert job.output_uri == f"{system.settings.output_prefix}/{job.id}.png"

    done = system.client.wait(job.id, timeout=WAIT_S)

    assert done.status == JobStatus.SUCCEEDED
    assert (done.attempts, done.error_code, done.worker) == (1, None, "e2e-worker")
    assert (done.image_width, done.image_height) == (200, 150)
    assert done.model_name == str(system.settings.model)
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.started_at <= done.finished_at
    assert set(done.timings or {}) >= {"download", "decode", "inference", "encode", "upload"}
    output = system.read_output(done.output_uri)
    assert (output.format, output.mode, output.size) == ("PNG", "RGBA", (200, 150))
    assert system.kinds(job.id) == [EventKind.CREATED, EventKind.STARTED, EventKind.SUCCEEDED]


def test_the_same_message_delivered_twice_is_processed_once(system: System) -> None:
    job = system.client.submit(system.put_input("twice.png", png_bytes()))
    app = create_celery_app(system.settings)
    enqueue(app, job.id, queue=system.settings.queue)  # a duplicate of the submit's message

    done = system.client.wait(job.id, timeout=WAIT_S)
    system.worker.wait_for_log(
        lambda line: line.get("event") == "job_skipped" and line.get("job_id") == str(job.id)
    )

    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 1
    assert system.kinds(job.id).count(EventKind.STARTED) == 1


def test_a_transient_s3_failure_is_retried_then_succeeds(system: System) -> None:
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


def test_retries_stop_at_max_attempts_with_the_last_error(system: System) -> None:
    uri = system.put_input("down.png", png_bytes())
    system.proxy.fail_next_gets("/in/down.png", failures=10)

    done = system.client.wait(system.client.submit(uri).id, timeout=WAIT_S)

    assert done.status == JobStatus.FAILED
    assert (done.attempts, done.error_code) == (3, "storage_unavailable")
    assert "gave up after 3 attempts" in (done.error_message or "")


def test_permanent_failures_fail_at_once_and_the_worker_goes_on(system: System) -> None:
    missing = system.client.submit(f"s3://{system.bucket}/in/no-such-object.png")
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


def test_a_job_cancelled_before_it_starts_is_never_processed(system: System) -> None:
    # Submitted on a queue no worker reads, so it cannot start before the cancel.
    parked = ToonqClient(
        Settings.from_env(system.env | {"TOONQ_QUEUE": f"parked-{uuid.uuid4().hex[:8]}"})
    )
    job = parked.submit(system.put_input("cancel.png", png_bytes()))
    cancelled = system.client.cancel(job.id, reason="changed my mind")
    assert cancelled.status == JobStatus.CANCELLED

    # Its message now reaches the worker anyway (say, a late redelivery): nothing happens.
    enqueue(create_celery_app(system.settings), job.id, queue=system.settings.queue)
    system.worker.wait_for_log(
        lambda line: line.get("event") == "job_skipped" and line.get("job_id") == str(job.id)
    )

    after = system.client.get(job.id)
    assert (after.status, after.attempts, after.started_at) == ("cancelled", 0, None)
    assert system.kinds(job.id) == [EventKind.CREATED, EventKind.CANCELLED]
    with pytest.raises(Exception, match="does not exist"):
        system.client.objects.get(after.output_uri, max_bytes=1 << 20)


def test_requeue_failed_jobs_by_id_and_by_filter_with_dry_run(system: System) -> None:
    first = system.client.submit(f"s3://{system.bucket}/in/late-1.png")
    second = system.client.submit(f"s3://{system.bucket}/in/late-2.png")
    for job in (first, second):
        assert system.client.wait(job.id, timeout=WAIT_S).error_code == "input_not_found"
    system.put_input("late-1.png", png_bytes())
    system.put_input("late-2.png", png_bytes())
    env = system.env

    # By id.
    requeued = run_json("requeue", str(first.id), env=env)
    assert [job["id"] for job in requeued] == [str(first.id)]
    assert system.client.wait(first.id, timeout=WAIT_S).status == JobStatus.SUCCEEDED

    # By filter, first as a dry run that changes nothing.
    since = first.created_at.isoformat()
    flags = ["--status", "failed", "--error-code", "input_not_found", "--since", since]
    preview = run_json("requeue", *flags, "--dry-run", env=env)
    assert [job["id"] for job in preview] == [str(second.id)]
    assert system.client.get(second.id).status == JobStatus.FAILED

    requeued = run_json("requeue", *flags, env=env)
    assert [job["id"] for job in requeued] == [str(second.id)]
    done = system.client.wait(second.id, timeout=WAIT_S)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 1)
    assert EventKind.REQUEUED in system.kinds(second.id)


def test_cli_submit_wait_and_status_print_the_json_contract(system: System) -> None:
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


def test_a_job_whose_worker_dies_is_reclaimed_by_another_worker(
    system: System, tmp_path: Path
) -> None:
    env = system.env | {
        "TOONQ_QUEUE": f"lost-{uuid.uuid4().hex[:8]}",
        "TOONQ_LEASE_SECONDS": "3",
        "TOONQ_SWEEP_INTERVAL_S": "1",
    }
    doomed = WorkerProcess(env | {"TOONQ_WORKER_NAME": "doomed"}, tmp_path / "doomed.log")
    doomed.wait_ready()
    uri = system.put_input("slow.png", png_bytes())
    system.proxy.hold_next_get("/in/slow.png", seconds=20)  # the first download hangs
    with ToonqClient(Settings.from_env(env)) as client:
        job = client.submit(uri)
        doomed.wait_for_log(
            lambda line: line.get("event") == "job_started" and line.get("job_id") == str(job.id)
        )
        doomed.process.kill()  # SIGKILL mid-job: nothing gets recorded, the message is unacked
        doomed.stop()
        assert client.get(job.id).status == JobStatus.RUNNING

        rescuer = WorkerProcess(env | {"TOONQ_WORKER_NAME": "rescuer"}, tmp_path / "rescuer.log")
        try:
            done = client.wait(job.id, timeout=WAIT_S)
        finally:
            rescuer.stop()
        kinds = [event.kind for event in client.events(job.id)]

    assert (done.status, done.worker, done.attempts) == (JobStatus.SUCCEEDED, "rescuer", 2)
    assert kinds == [
        EventKind.CREATED,
        EventKind.STARTED,
        EventKind.RECLAIMED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]


def test_a_slow_job_keeps_its_lease_and_runs_once(system: System, tmp_path: Path) -> None:
    env = system.env | {
        "TOONQ_QUEUE": f"slow-{uuid.uuid4().hex[:8]}",
        "TOONQ_LEASE_SECONDS": "2",  # the download below takes four leases
        "TOONQ_SWEEP_INTERVAL_S": "1",
    }
    # Two workers: were the lease to lapse, the idle one would take the job over.
    workers = [
        WorkerProcess(env | {"TOONQ_WORKER_NAME": name}, tmp_path / f"{name}.log")
        for name in ("w1", "w2")
    ]
    uri = system.put_input("slower.png", png_bytes())
    system.proxy.hold_next_get("/in/slower.png", seconds=8)
    try:
        for worker in workers:
            worker.wait_ready()
        with ToonqClient(Settings.from_env(env)) as client:
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
    system: System, tmp_path: Path
) -> None:
    port = free_port()
    env = system.env | {
        "TOONQ_QUEUE": f"metrics-{uuid.uuid4().hex[:8]}",
        "TOONQ_METRICS_PORT": str(port),
        "TOONQ_METRICS_QUEUE_DEPTH": "1",
    }
    worker = WorkerProcess(env, tmp_path / "metrics.log")
    try:
        worker.wait_ready()
        base = f"http://127.0.0.1:{port}"
        assert _scrape(f"{base}/readyz")[0] == 200
        assert _scrape(f"{base}/livez")[0] == 200
        with ToonqClient(Settings.from_env(env)) as client:
            ok = client.submit(system.put_input("metrics-ok.png", png_bytes()))
            bad = client.submit(system.put_input("metrics-bad.png", b"not an image"))
            for job in (ok, bad):
                client.wait(job.id, timeout=WAIT_S)
        status, text = _scrape(f"{base}/metrics")
    finally:
        worker.stop()

    assert status == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    jobs = "toonq_jobs_total"
    assert samples[(jobs, (("error_code", ""), ("status", "succeeded")))] == 1
    assert samples[(jobs, (("error_code", "unsupported_format"), ("status", "failed")))] == 1
    for stage in ("queue_wait", "download", "decode", "inference", "encode", "upload", "total"):
        assert samples[("toonq_job_stage_seconds_count", (("stage", stage),))] >= 1
    assert samples[("toonq_batch_size_count", ())] >= 1
    assert samples[("toonq_worker_ready", ())] == 1
    assert samples[("toonq_model_load_seconds", ())] > 0
    depths = {labels: v for (name, labels), v in samples.items() if name == "toonq_queue_depth"}
    assert len(depths) == 4  # the queue's four priority lists, all drained
    assert set(depths.values()) == {0}
