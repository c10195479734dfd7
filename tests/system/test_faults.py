"""Faults injected into a running system of real processes: a worker SIGKILLed or SIGTERMed
mid-job, Redis and PostgreSQL restarted under load, S3 answering errors, hanging or slow.

Every test ends with the same audit: each job in a final state, none done twice (one `succeeded`
event, one output content), every success with its output. Recovery times are asserted against
the settings that should bound them, with the broker's visibility timeout set far out of reach,
so that only the mechanism under test can explain a quick recovery.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.cluster import Cluster, running_cluster
from tests.conftest import StartCluster
from tests.servers import PrivatePostgres, PrivateRedis
from toonq.producer import ToonqClient
from toonq.shared.errors import StorageUnavailableError
from toonq.shared.queue import TASK_NAME, create_celery_app
from toonq.shared.settings import Settings
from toonq.shared.storage.s3 import S3Store

pytestmark = pytest.mark.timeout(240)

ClusterFactory = Callable[..., AbstractContextManager[Cluster]]

LEASE_S = 3
SWEEP_S = 1
GRACE_S = 3
#: Room for a claim, one CPU inference and the writes on a small, busy machine.
SLACK_S = 8
#: Beyond any test's patience: within a test, neither does Redis redeliver an unacknowledged
#: message nor does recovery send a queued job again.
UNREACHABLE = {"TOONQ_VISIBILITY_TIMEOUT_S": "3600", "TOONQ_RESEND_AFTER_S": "3600"}


@pytest.fixture
def make_cluster(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, s3_server: str, tmp_path: Path
) -> ClusterFactory:
    """Builds a cluster on the private servers, with extra worker settings."""

    def make(**env: str) -> AbstractContextManager[Cluster]:
        return running_cluster(
            postgres_admin_url=private_postgres.url,
            broker_url=private_redis.url,
            s3_endpoint=s3_server,
            log_dir=tmp_path,
            env=env,
        )

    return make


# --- Workers dying --------------------------------------------------------------------------------


def test_a_worker_killed_mid_job_loses_it_for_one_lease_only(make_cluster: ClusterFactory) -> None:
    settings = {"TOONQ_LEASE_SECONDS": str(LEASE_S), "TOONQ_SWEEP_INTERVAL_S": str(SWEEP_S)}
    with make_cluster(**settings, **UNREACHABLE) as cluster:
        cluster.start_workers("alpha", "beta")
        uri = cluster.put_input("stuck.png")
        stuck = cluster.proxy.gate_next_get("/in/stuck.png")  # the first download never ends
        try:
            (job_id,) = cluster.submit([uri])
            victim = cluster.wait_for(lambda jobs: jobs[job_id].status == "running", timeout=60)[
                job_id
            ].worker
            assert victim is not None
            cluster.worker(victim).kill()
            killed_at = time.time()
            done = cluster.wait_final(timeout=60)[job_id]
        finally:
            stuck.set()
        audit = cluster.audit()

    survivor = ({"alpha", "beta"} - {victim}).pop()
    assert (done.status, done.worker, done.attempts) == ("succeeded", survivor, 2)
    assert done.finished_at is not None
    recovery_s = done.finished_at.timestamp() - killed_at
    assert recovery_s < LEASE_S + SWEEP_S + SLACK_S, f"recovered in {recovery_s:.1f} s"
    assert audit.events[job_id]["reclaimed"] == 1
    assert len(cluster.proxy.writes(done.output_uri)) == 1  # only the survivor got to write
    audit.assert_sound(1)


def test_a_message_that_died_with_its_worker_before_the_claim_is_not_lost(
    make_cluster: ClusterFactory,
) -> None:
    # The window between a worker receiving a message and claiming its job, widened by a row
    # lock on the job: the worker dies holding an unacknowledged message for a job that is
    # still queued, so no lease can expire, and Redis keeps the message for an hour.
    settings = {"TOONQ_LEASE_SECONDS": str(LEASE_S), "TOONQ_SWEEP_INTERVAL_S": str(SWEEP_S)}
    with make_cluster(**settings, **UNREACHABLE) as cluster:
        cluster.start_workers("alpha", "beta")
        job_id = _submitted_unannounced(cluster)
        with cluster.database.connect() as locker, locker.begin():
            locker.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
            task_id = _announce(cluster, job_id)
            victim = _receiver(cluster, task_id, ("alpha", "beta"))
            cluster.wait_for(lambda _: _claims_waiting_on_a_lock(cluster) == 1, timeout=30)
            cluster.worker(victim).kill()
            killed_at = time.time()
        done = cluster.wait_final(timeout=LEASE_S + SWEEP_S + SLACK_S + 10)[job_id]
        audit = cluster.audit()

    assert (done.status, done.attempts) == ("succeeded", 1)
    assert done.finished_at is not None
    recovery_s = done.finished_at.timestamp() - killed_at
    assert recovery_s < LEASE_S + SWEEP_S + SLACK_S, f"recovered in {recovery_s:.1f} s"
    audit.assert_sound(1)


def _submitted_unannounced(cluster: Cluster) -> uuid.UUID:
    """A job committed with its message sent where no worker listens: queued, and sent."""
    parked = Settings.from_env(cluster.env | {"TOONQ_QUEUE": cluster.new_queue("parked")})
    with ToonqClient(parked) as client:
        return client.submit(cluster.put_input("announced-late.png")).id


def _announce(cluster: Cluster, job_id: uuid.UUID) -> str:
    """Send the job's message to the workers' queue; returns its Celery task id."""
    settings = cluster.client.settings
    app = create_celery_app(settings)
    try:
        return str(app.send_task(TASK_NAME, args=[str(job_id)], queue=settings.queue).id)
    finally:
        app.close()


def _receiver(cluster: Cluster, task_id: str, names: tuple[str, ...]) -> str:
    """The worker whose Celery consumer received the message `task_id`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for name in names:
            if f"[{task_id}] received" in cluster.worker(name).log_path.read_text():
                return name
        time.sleep(0.1)
    raise AssertionError(f"no worker received {task_id}")


def _claims_waiting_on_a_lock(cluster: Cluster) -> int:
    with cluster.database.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar_one()
    return int(waiting)


def test_sigterm_finishes_the_jobs_it_can_and_hands_back_the_others(
    make_cluster: ClusterFactory,
) -> None:
    settings = {
        "TOONQ_SHUTDOWN_GRACE_S": str(GRACE_S),
        # Far longer than the test may take: a lease running out cannot explain the recovery.
        "TOONQ_LEASE_SECONDS": "120",
        "TOONQ_SWEEP_INTERVAL_S": str(SWEEP_S),
        "TOONQ_CONCURRENCY": "4",
    }
    with make_cluster(**settings, **UNREACHABLE) as cluster:
        (leaving,) = cluster.start_workers("leaving")
        quick_gate = cluster.proxy.gate_next_get("/in/quick.png")
        stuck_gate = cluster.proxy.gate_next_get("/in/stuck.png")
        try:
            quick, stuck = cluster.submit(
                [cluster.put_input("quick.png"), cluster.put_input("stuck.png")]
            )
            cluster.wait_for(
                lambda jobs: all(jobs[j].status == "running" for j in (quick, stuck)), timeout=60
            )
            cluster.start_workers("staying")

            stopping_at = time.time()
            leaving.process.send_signal(signal.SIGTERM)
            quick_gate.set()  # this download ends within the grace period, the other never does
            try:
                leaving.process.wait(timeout=GRACE_S + SLACK_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the worker outlived its {GRACE_S} s grace by {SLACK_S} s")
            exit_s = time.time() - stopping_at
            jobs = cluster.wait_final(timeout=60)
        finally:
            stuck_gate.set()
        audit = cluster.audit()

    assert exit_s >= GRACE_S - 0.5  # it did wait for the stuck job before handing it back
    assert (jobs[quick].status, jobs[quick].worker, jobs[quick].attempts) == (
        "succeeded",
        "leaving",
        1,
    )
    # Handed back at once, without spending an attempt, and finished by the other worker.
    assert (jobs[stuck].status, jobs[stuck].worker, jobs[stuck].attempts) == (
        "succeeded",
        "staying",
        1,
    )
    finished_at = jobs[stuck].finished_at
    assert finished_at is not None
    assert finished_at.timestamp() - stopping_at < GRACE_S + SLACK_S
    audit.assert_sound(2)


# --- Servers restarting ---------------------------------------------------------------------------


def test_restarting_redis_and_postgres_under_load_loses_and_repeats_nothing(
    make_cluster: ClusterFactory, private_redis: PrivateRedis, private_postgres: PrivatePostgres
) -> None:
    settings = {
        "TOONQ_LEASE_SECONDS": str(LEASE_S),
        "TOONQ_SWEEP_INTERVAL_S": str(SWEEP_S),
        # Redis keeps nothing across the restart: recovery sends again what it lost, after this.
        "TOONQ_VISIBILITY_TIMEOUT_S": "10",
        "TOONQ_RESEND_AFTER_S": "10",
    }
    with make_cluster(**settings) as cluster:
        cluster.start_workers("one", "two")
        cluster.proxy.slow_down(0.2)  # keeps jobs in flight when the servers go down
        inputs = cluster.put_inputs()
        first = cluster.submit([inputs[i % len(inputs)] for i in range(40)])

        cluster.wait_for(lambda _: _final_count(cluster) >= 10, timeout=60)
        private_redis.kill()  # the queue and every unacknowledged message are gone
        # Submitting still works: the job is committed, its message is sent once Redis is back.
        late = cluster.submit(inputs[:5])
        private_redis.start()
        cluster.wait_for(lambda _: _final_count(cluster) >= 25, timeout=60)
        private_postgres.restart(mode="immediate")  # a crash: every connection drops
        jobs = cluster.wait_final(timeout=120)
        audit = cluster.audit()

    assert set(jobs) == set(first) | set(late)
    assert audit.statuses == {"succeeded": 45}
    audit.assert_sound(45)


def _final_count(cluster: Cluster) -> int:
    statuses = cluster.statuses()
    return statuses["succeeded"] + statuses["failed"] + statuses["cancelled"]


# --- S3 failing -----------------------------------------------------------------------------------

#: The workers' botocore read timeout in the S3 tests, and how long a hung request hangs.
READ_TIMEOUT_S = 2
HANG_S = 20


@pytest.fixture(scope="module")
def s3_cluster(start_cluster: StartCluster) -> Cluster:
    """One worker, three attempts per job, and a short S3 read timeout."""
    return start_cluster(
        "s3-worker", TOONQ_MAX_ATTEMPTS="3", TOONQ_S3_READ_TIMEOUT_S=str(READ_TIMEOUT_S)
    )


def _run_one(cluster: Cluster, name: str, *, timeout: float = 60) -> tuple[str, float]:
    """Submit one job on input `name`, written to `out/<name>`; its job id and how long it
    took to reach a final state."""
    uri = cluster.put_input(name)
    started = time.monotonic()
    job = cluster.client.submit(uri, output_uri=f"{cluster.client.settings.output_prefix}/{name}")
    cluster.client.wait(job.id, timeout=timeout)
    return str(job.id), time.monotonic() - started


@pytest.mark.parametrize(
    ("method", "status", "code"),
    [("GET", 500, "InternalError"), ("PUT", 503, "SlowDown"), ("PUT", 500, "InternalError")],
)
def test_transient_s3_errors_are_retried_then_succeed(
    s3_cluster: Cluster, method: str, status: int, code: str
) -> None:
    name = f"flaky-{method.lower()}-{status}.png"
    s3_cluster.proxy.fail_next(f"/{name}", 2, method=method, status=status, code=code)

    job_id, _ = _run_one(s3_cluster, name)

    done = s3_cluster.client.get(job_id)
    assert (done.status, done.attempts) == ("succeeded", 3)
    retried = [e for e in s3_cluster.client.events(done.id) if e.kind == "retried"]
    assert [(e.details or {}).get("error_code") for e in retried] == ["storage_unavailable"] * 2


@pytest.mark.parametrize(
    ("method", "status", "code", "failures", "error_code", "attempts"),
    [
        ("GET", 403, "AccessDenied", 1, "input_access_denied", 1),
        ("PUT", 403, "AccessDenied", 1, "output_access_denied", 1),
        ("PUT", 500, "InternalError", 10, "storage_unavailable", 3),
    ],
)
def test_s3_errors_that_do_not_pass_fail_the_job_with_a_typed_code(
    s3_cluster: Cluster,
    method: str,
    status: int,
    code: str,
    failures: int,
    error_code: str,
    attempts: int,
) -> None:
    name = f"broken-{method.lower()}-{status}.png"
    s3_cluster.proxy.fail_next(f"/{name}", failures, method=method, status=status, code=code)

    job_id, _ = _run_one(s3_cluster, name)

    done = s3_cluster.client.get(job_id)
    assert (done.status, done.error_code, done.attempts) == ("failed", error_code, attempts)
    assert s3_cluster.proxy.writes(done.output_uri) == []


def test_a_hung_s3_request_times_out_and_the_job_is_retried(s3_cluster: Cluster) -> None:
    s3_cluster.proxy.hang_next("/in/hung.png", HANG_S)

    job_id, took_s = _run_one(s3_cluster, "hung.png")

    done = s3_cluster.client.get(job_id)
    assert (done.status, done.attempts) == ("succeeded", 2)
    (retried,) = [e for e in s3_cluster.client.events(done.id) if e.kind == "retried"]
    assert (retried.details or {}).get("error_code") == "storage_unavailable"
    # The first attempt gave up after the read timeout (TOONQ_S3_READ_TIMEOUT_S), not when the
    # endpoint finally dropped the connection.
    assert took_s < READ_TIMEOUT_S + SLACK_S < HANG_S, (
        f"the job took {took_s:.1f} s: its first attempt did not give up after the "
        f"{READ_TIMEOUT_S} s read timeout of TOONQ_S3_READ_TIMEOUT_S"
    )


def test_a_slow_but_live_s3_endpoint_is_waited_for(s3_cluster: Cluster) -> None:
    delay_s = READ_TIMEOUT_S / 2  # each request answers well within the read timeout
    s3_cluster.proxy.slow_down(delay_s)
    try:
        job_id, _ = _run_one(s3_cluster, "slow.png")
    finally:
        s3_cluster.proxy.slow_down(0)

    done = s3_cluster.client.get(job_id)
    assert (done.status, done.attempts) == ("succeeded", 1)
    timings = done.timings or {}
    assert timings["download"] >= delay_s * 1000
    assert timings["upload"] >= delay_s * 1000


@pytest.mark.parametrize(("hangs", "fails"), [(1, False), (2, True)])
def test_the_s3_store_times_out_a_hung_read_and_retries_it_once(
    s3_cluster: Cluster, hangs: int, fails: bool
) -> None:
    uri = s3_cluster.put_input(f"hung-{hangs}.png")
    s3_cluster.proxy.hang_next(f"/hung-{hangs}.png", HANG_S, times=hangs)
    store = S3Store(s3_cluster.proxy.endpoint, max_attempts=2, read_timeout_s=1)

    started = time.monotonic()
    if fails:
        with pytest.raises(StorageUnavailableError, match="timeout"):
            store.get(uri, max_bytes=1 << 20)
    else:
        assert store.get(uri, max_bytes=1 << 20).startswith(b"\x89PNG")
    took_s = time.monotonic() - started

    assert took_s < hangs * 1 + SLACK_S < HANG_S
