"""`process_job`, one message at a time, on the in-memory job store, the memory broker, a file
object store and the stand-in model: what each outcome does to the job and which messages it
sends."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from tests.support import png_bytes
from toonq.shared.errors import (
    DatabaseUnavailableError,
    InputNotFoundError,
    StorageUnavailableError,
)
from toonq.shared.job import Claim, EventKind, Job, JobParams, JobSpec, JobStatus, Outcome
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import UriPolicy
from toonq.shared.storage.local import LocalStore
from toonq.worker.batcher import InferenceBatcher
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.matting import MattingEngine, StackedBatch
from toonq.worker.engine.weights import load_model
from toonq.worker.lease import LeaseKeeper
from toonq.worker.processor import WorkerContext, process_job

if TYPE_CHECKING:
    from tests.conftest import ManualClock
    from tests.unit.conftest import MemoryBroker

WORKER = "w1"


class InterruptedStore(LocalStore):
    """A file object store that calls `before_read` before each read: to fail as an
    unavailable store does, or to change the job while its attempt runs."""

    def __init__(self, roots: list[Path], before_read: Callable[[], None]) -> None:
        super().__init__(roots)
        self._before_read = before_read

    def get(self, uri: str, *, max_bytes: int) -> bytes:
        self._before_read()
        return super().get(uri, max_bytes=max_bytes)


class OutcomeWritesFailing(InMemoryJobStore):
    """An in-memory job store whose next `failures` success writes find the database
    unavailable, as during a short PostgreSQL outage."""

    def __init__(self, *, clock: ManualClock, failures: int) -> None:
        super().__init__(clock=clock)
        self.failures = failures

    def mark_succeeded(self, claim: Claim, **outcome: Any) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise DatabaseUnavailableError("database unavailable: connection refused")
        return super().mark_succeeded(claim, **outcome)


def storage_unavailable() -> None:
    raise StorageUnavailableError("503 Slow Down")


@pytest.fixture(scope="module")
def engine() -> MattingEngine:
    return MattingEngine(load_model("standin:0"), device="cpu", resolution=64)


@pytest.fixture(scope="module")
def batcher(engine: MattingEngine) -> Iterator[InferenceBatcher[StackedBatch]]:
    """The GPU loop, shared by the module's tests: it keeps no job's state."""
    batcher = InferenceBatcher(engine.stack_batch, engine.run_batch, max_batch_size=1, max_wait_s=0)
    batcher.start()
    yield batcher
    batcher.stop()


@pytest.fixture
def ctx(
    settings: Settings,
    jobstore: InMemoryJobStore,
    sender: Sender,
    engine: MattingEngine,
    batcher: InferenceBatcher[StackedBatch],
) -> WorkerContext:
    return WorkerContext(
        settings=settings,
        store=jobstore,
        objects=LocalStore([settings.home]),
        uris=UriPolicy.from_settings(settings),
        engine=engine,
        batcher=batcher,
        cpu=CpuSlots(2),
        leases=LeaseKeeper(jobstore, lease_s=settings.lease_s, job_timeout_s=900),
        sender=sender,
        worker_name=WORKER,
    )


def submitted(
    ctx: WorkerContext,
    *,
    max_attempts: int = 3,
    with_input: bool = True,
    output_uri: str | None = None,
) -> Job:
    """A job whose input is a PNG in TOONQ_HOME (or nowhere) and whose output goes under
    TOONQ_OUTPUT_PREFIX unless `output_uri` says where, as the client creates it."""
    home = ctx.settings.home
    source = home / "in" / f"{uuid.uuid4().hex}.png"
    if with_input:
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(png_bytes((80, 60)))
    job, _ = ctx.store.create(
        JobSpec(
            input_uri=source.as_uri(),
            output_uri=output_uri or f"{ctx.settings.output_prefix}/{source.name}",
            params=JobParams(bg_color="#808080", format="png", resolution=64),
            max_attempts=max_attempts,
        ),
        actor="test",
    )
    return job


def output_path(job: Job) -> Path:
    return Path(job.output_uri.removeprefix("file://"))


def test_success_writes_the_output_then_records_it(
    ctx: WorkerContext, broker: MemoryBroker
) -> None:
    job = submitted(ctx)

    assert process_job(ctx, job.id) is Outcome.SUCCEEDED

    with Image.open(io.BytesIO(output_path(job).read_bytes())) as output:
        assert (output.format, output.mode, output.size) == ("PNG", "RGBA", (80, 60))
    done = ctx.store.get(job.id)
    assert (done.status, done.attempts, done.worker) == (JobStatus.SUCCEEDED, 1, WORKER)
    assert (done.model, done.image_width, done.image_height) == ("standin:0@standin", 80, 60)
    assert done.timings is not None
    assert {"queue_wait", "download", "inference", "upload", "total"} <= done.timings.keys()
    assert [event.kind for event in ctx.store.events(job.id)] == [
        EventKind.CREATED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]
    assert broker.take_sent() == []


def test_a_missing_input_fails_the_job_at_once(ctx: WorkerContext, broker: MemoryBroker) -> None:
    job = submitted(ctx, with_input=False)

    assert process_job(ctx, job.id) is Outcome.FAILED

    failed = ctx.store.get(job.id)
    assert (failed.status, failed.error_code, failed.attempts) == (
        JobStatus.FAILED,
        "input_not_found",
        1,
    )
    assert not output_path(job).exists()
    assert broker.take_sent() == []


@pytest.mark.parametrize("name", ["toonq.db", "elsewhere.png"])
def test_a_row_whose_output_the_policy_refuses_fails_without_writing(
    ctx: WorkerContext, broker: MemoryBroker, name: str
) -> None:
    """A row from an older producer is checked again: an output over the SQLite database, or
    anywhere else outside the output prefixes, fails the job for good."""
    target = ctx.settings.home / name
    target.write_bytes(b"SQLite format 3")
    job = submitted(ctx, output_uri=target.as_uri())

    assert process_job(ctx, job.id) is Outcome.FAILED

    failed = ctx.store.get(job.id)
    assert (failed.status, failed.error_code, failed.attempts) == (
        JobStatus.FAILED,
        "invalid_uri",
        1,
    )
    assert target.read_bytes() == b"SQLite format 3"
    assert broker.take_sent() == []


def test_an_input_under_the_output_prefix_is_not_read(ctx: WorkerContext) -> None:
    done = submitted(ctx)
    assert process_job(ctx, done.id) is Outcome.SUCCEEDED
    job, _ = ctx.store.create(
        JobSpec(
            input_uri=done.output_uri,
            output_uri=f"{ctx.settings.output_prefix}/chained.png",
            params=done.params,
            max_attempts=1,
        ),
        actor="test",
    )

    assert process_job(ctx, job.id) is Outcome.FAILED

    assert ctx.store.get(job.id).error_code == "invalid_uri"
    assert not output_path(job).exists()


def test_a_transient_error_schedules_a_retry_and_sends_its_message(
    ctx: WorkerContext, broker: MemoryBroker
) -> None:
    ctx = replace(ctx, objects=InterruptedStore([ctx.settings.home], storage_unavailable))
    job = submitted(ctx)
    before = datetime.now(UTC)

    assert process_job(ctx, job.id) is Outcome.RETRYING

    retrying = ctx.store.get(job.id)
    assert (retrying.status, retrying.error_code, retrying.attempts) == (
        JobStatus.RETRYING,
        "storage_unavailable",
        1,
    )
    assert retrying.next_attempt_at is not None
    # The first backoff step, with its jitter: between half and all of TOONQ_RETRY_BACKOFF_S.
    backoff = timedelta(seconds=ctx.settings.retry_backoff_s)
    assert before + backoff / 2 <= retrying.next_attempt_at <= datetime.now(UTC) + backoff
    assert retrying.sent_at is not None
    [message] = broker.take_sent()
    assert message.job_id == job.id
    assert message.eta is not None
    assert abs(message.eta - retrying.next_attempt_at) < timedelta(seconds=1)


def test_a_transient_error_on_the_last_attempt_fails_the_job(
    ctx: WorkerContext, broker: MemoryBroker
) -> None:
    ctx = replace(ctx, objects=InterruptedStore([ctx.settings.home], storage_unavailable))
    job = submitted(ctx, max_attempts=1)

    assert process_job(ctx, job.id) is Outcome.FAILED

    failed = ctx.store.get(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "storage_unavailable")
    assert failed.error_message == "gave up after 1 attempts: 503 Slow Down"
    assert broker.take_sent() == []


def test_a_duplicate_message_of_a_running_job_is_skipped(ctx: WorkerContext) -> None:
    job = submitted(ctx)
    running = ctx.store.claim(job.id, worker="w2", lease_s=60)
    assert running is not None

    assert process_job(ctx, job.id) is Outcome.SKIPPED

    assert ctx.store.get(job.id) == running.job
    assert not output_path(job).exists()


def test_a_message_of_a_finished_job_is_skipped(ctx: WorkerContext) -> None:
    job = submitted(ctx)
    assert process_job(ctx, job.id) is Outcome.SUCCEEDED
    done = ctx.store.get(job.id)

    assert process_job(ctx, job.id) is Outcome.SKIPPED

    assert ctx.store.get(job.id) == done


def test_the_outcome_of_a_job_cancelled_while_it_ran_is_discarded(ctx: WorkerContext) -> None:
    job = submitted(ctx)

    def cancel() -> None:
        ctx.store.cancel(job.id, actor="cli:ops@laptop", reason="wrong input")

    ctx = replace(ctx, objects=InterruptedStore([ctx.settings.home], cancel))

    assert process_job(ctx, job.id) is Outcome.DISCARDED

    cancelled = ctx.store.get(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.model is None
    assert ctx.store.events(job.id)[-1].kind is EventKind.CANCELLED


def test_a_job_whose_lease_renewal_is_refused_stops_before_writing_its_output(
    ctx: WorkerContext,
) -> None:
    job = submitted(ctx)

    def cancel_then_heartbeat() -> None:
        ctx.store.cancel(job.id, actor="cli:ops@laptop", reason="wrong input")
        ctx.leases.renew()

    interrupted = replace(ctx, objects=InterruptedStore([ctx.settings.home], cancel_then_heartbeat))

    assert process_job(interrupted, job.id) is Outcome.DISCARDED

    assert ctx.store.get(job.id).status is JobStatus.CANCELLED
    with pytest.raises(InputNotFoundError):  # nothing was written
        ctx.objects.get(job.output_uri, max_bytes=1 << 20)


def test_a_row_asking_for_more_than_the_resolution_cap_fails_without_running(
    ctx: WorkerContext,
) -> None:
    # Written by a producer under another configuration: the worker checks it again.
    job = submitted(ctx)
    capped = replace(ctx, settings=replace(ctx.settings, resolution=32, max_resolution=32))

    assert process_job(capped, job.id) is Outcome.FAILED

    failed = ctx.store.get(job.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "invalid_request")
    assert "up to 32, got 64" in (failed.error_message or "")
    with pytest.raises(InputNotFoundError):  # nothing was written
        ctx.objects.get(job.output_uri, max_bytes=1 << 20)


def test_a_retry_message_that_arrives_before_its_backoff_is_rescheduled_not_run(
    ctx: WorkerContext, clock: ManualClock, broker: MemoryBroker
) -> None:
    job = submitted(ctx)
    first = ctx.store.claim(job.id, worker=WORKER, lease_s=60)
    assert first is not None
    due = clock() + timedelta(seconds=30)
    assert ctx.store.mark_retrying(
        first, error_code="storage_unavailable", error_message="503", next_attempt_at=due
    )

    assert process_job(ctx, job.id) is Outcome.SKIPPED

    after = ctx.store.get(job.id)
    assert (after.status, after.attempts) == (JobStatus.RETRYING, 1)
    assert after.sent_at is not None  # sent again, for when it is due
    [message] = broker.take_sent()
    assert message.job_id == job.id
    assert message.eta is not None
    assert abs(message.eta - due) < timedelta(seconds=1)


def on_store(ctx: WorkerContext, store: InMemoryJobStore, broker: MemoryBroker) -> WorkerContext:
    """`ctx` on `store`, with a quick backoff and a lease of one second."""
    settings = replace(ctx.settings, lease_s=1, retry_backoff_s=0.01)
    return replace(
        ctx,
        settings=settings,
        store=store,
        leases=LeaseKeeper(store, lease_s=settings.lease_s, job_timeout_s=900),
        sender=Sender(broker.app, store, queue=broker.queue),
    )


def test_an_outcome_the_database_refuses_once_is_recorded_by_the_same_attempt(
    ctx: WorkerContext, clock: ManualClock, broker: MemoryBroker
) -> None:
    ctx = on_store(ctx, OutcomeWritesFailing(clock=clock, failures=2), broker)
    job = submitted(ctx)

    assert process_job(ctx, job.id) is Outcome.SUCCEEDED

    done = ctx.store.get(job.id)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 1)
    assert [event.kind for event in ctx.store.events(job.id)] == [
        EventKind.CREATED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]
    # No retried message to find the job under its own lease and skip it.
    assert broker.take_sent() == []
    assert ctx.leases.held() == []


def test_an_outcome_the_database_refuses_for_a_lease_leaves_the_job_to_be_reclaimed(
    ctx: WorkerContext, clock: ManualClock, broker: MemoryBroker
) -> None:
    ctx = on_store(ctx, OutcomeWritesFailing(clock=clock, failures=1000), broker)
    job = submitted(ctx)

    with pytest.raises(DatabaseUnavailableError):  # the message is retried
        process_job(ctx, job.id)

    # The lease is no longer renewed: once it lapses, recovery has the job reclaimed.
    assert ctx.leases.held() == []
    assert ctx.store.get(job.id).status is JobStatus.RUNNING
