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
from typing import TYPE_CHECKING
from unittest.mock import ANY

import pytest
import torch
from PIL import Image

from tests.support import png_bytes
from toonq.shared.errors import (
    DatabaseUnavailableError,
    InputNotFoundError,
    StorageUnavailableError,
)
from toonq.shared.job import (
    Claim,
    EventKind,
    Job,
    JobParams,
    JobSpec,
    JobStatus,
    Outcome,
    StagedOutput,
)
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import UriPolicy
from toonq.shared.storage.local import LocalStore
from toonq.shared.storage.uri import STAGING_FOLDER
from toonq.shared.tenants import TenantLimits
from toonq.worker.batcher import InferenceBatcher
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.matting import MattingEngine, StackedBatch
from toonq.worker.engine.weights import load_model
from toonq.worker.lease import LeaseKeeper
from toonq.worker.memory import MemoryBudget
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

    def mark_succeeded(self, claim: Claim, staged: StagedOutput) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise DatabaseUnavailableError("database unavailable: connection refused")
        return super().mark_succeeded(claim, staged)


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
        memory=MemoryBudget(1 << 30),
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
    tenant: str | None = None,
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
            tenant=tenant,
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


def with_tenants(ctx: WorkerContext, broker: MemoryBroker, limits: TenantLimits) -> WorkerContext:
    """`ctx` with a sender that holds tenants' jobs under `limits`."""
    sender = Sender(broker.app, ctx.store, queue=broker.queue, tenants=limits)
    return replace(ctx, sender=sender)


def test_claiming_a_tenants_job_releases_its_next_held_one(
    ctx: WorkerContext, broker: MemoryBroker
) -> None:
    ctx = with_tenants(ctx, broker, TenantLimits(queue_slots=2))
    jobs = [submitted(ctx, tenant="acme") for _ in range(4)]
    ctx.sender.dispatch(jobs)
    assert [message.job_id for message in broker.take_sent()] == [jobs[0].id, jobs[1].id]

    assert process_job(ctx, jobs[0].id) is Outcome.SUCCEEDED

    assert [message.job_id for message in broker.take_sent()] == [jobs[2].id]
    assert ctx.store.get(jobs[3].id).sent_at is None  # held until the next claim


def test_a_tenants_jobs_in_flight_are_capped_at_release(
    ctx: WorkerContext, broker: MemoryBroker
) -> None:
    ctx = with_tenants(ctx, broker, TenantLimits(queue_slots=4, max_in_flight=1))
    jobs = [submitted(ctx, tenant="acme") for _ in range(3)]
    ctx.sender.dispatch(jobs)
    assert [message.job_id for message in broker.take_sent()] == [jobs[0].id]

    assert process_job(ctx, jobs[0].id) is Outcome.SUCCEEDED

    # Not at the claim (its job was running then): at its end.
    assert [message.job_id for message in broker.take_sent()] == [jobs[1].id]


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


def test_an_image_needing_more_than_the_memory_budget_fails_at_once(ctx: WorkerContext) -> None:
    # The input is 80x60: 16 bytes a pixel on the CPU is 76,800 bytes, over a 64 KiB budget.
    small_budget = replace(ctx, memory=MemoryBudget(64 * 1024))
    job = submitted(small_budget)

    assert process_job(small_budget, job.id) is Outcome.FAILED

    failed = ctx.store.get(job.id)
    assert (failed.status, failed.error_code, failed.attempts) == (
        JobStatus.FAILED,
        "image_too_large",
        1,
    )
    assert failed.error_message is not None
    assert failed.error_message.startswith("a 80x60 image needs about")
    assert failed.error_message.endswith("(TOONQ_MEMORY_BUDGET_MB)")
    assert not output_path(job).exists()


@pytest.mark.parametrize("outcome", [Outcome.SUCCEEDED, Outcome.FAILED])
def test_the_memory_a_job_reserved_is_given_back_whatever_its_outcome(
    ctx: WorkerContext, outcome: Outcome
) -> None:
    job = submitted(ctx)
    if outcome is Outcome.FAILED:
        # A readable header, then truncated pixel data: the decode fails once memory is reserved.
        source = Path(job.input_uri.removeprefix("file://"))
        source.write_bytes((data := source.read_bytes())[: len(data) // 2])

    assert process_job(ctx, job.id) is outcome

    assert ctx.store.get(job.id).error_code in (None, "invalid_image")
    assert ctx.memory.reserved_bytes == 0


def broken_device(batch: StackedBatch) -> list[torch.Tensor]:
    """The model's run on a GPU with a persistent fault: every batch fails."""
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_jobs_reaching_a_loop_stopped_by_a_broken_device_go_back_unspent(
    ctx: WorkerContext, broker: MemoryBroker
) -> None:
    reasons: list[str] = []
    broken = InferenceBatcher(
        ctx.engine.stack_batch,
        broken_device,
        max_batch_size=1,
        max_wait_s=0,
        max_failed_batches=2,
        on_failed=reasons.append,
    )
    broken.start()
    ctx = replace(ctx, batcher=broken)
    try:
        first, second, third = (submitted(ctx) for _ in range(3))
        # The batches that take the device for broken cost their jobs one attempt each, as one
        # transient error does.
        assert process_job(ctx, first.id) is Outcome.RETRYING
        assert process_job(ctx, second.id) is Outcome.RETRYING

        assert process_job(ctx, third.id) is Outcome.HANDED_BACK
        assert len(reasons) == 1
    finally:
        broken.stop(timeout=5)

    for job, status, attempts in ((first, JobStatus.RETRYING, 1), (second, JobStatus.RETRYING, 1)):
        after = ctx.store.get(job.id)
        assert (after.status, after.error_code, after.attempts) == (
            status,
            "internal_error",
            attempts,
        )
    handed = ctx.store.get(third.id)
    assert (handed.status, handed.attempts, handed.worker) == (JobStatus.QUEUED, 0, None)
    assert ctx.store.events(third.id)[-1].kind == EventKind.HANDED_BACK
    assert ctx.store.events(third.id)[-1].reason == reasons[0]
    assert [message.job_id for message in broker.take_sent()] == [first.id, second.id, third.id]


# --- Publishing one output per job ----------------------------------------------------------------


class WorkerKilled(BaseException):
    """The worker process dies (SIGKILL): nothing of the attempt runs after it."""


class DyingCopyStore(LocalStore):
    """A file object store whose worker dies when it copies an object: after the commit,
    before the output is published."""

    def copy(self, source_uri: str, target_uri: str) -> None:
        raise WorkerKilled


class UnavailableCopyStore(LocalStore):
    """A file object store whose copies fail as an unavailable store's do."""

    def copy(self, source_uri: str, target_uri: str) -> None:
        storage_unavailable()


def staging_folder(job: Job) -> Path:
    return output_path(job).parent / STAGING_FOLDER


@pytest.mark.parametrize("taken_by", ["reclaim", "cancel and requeue"])
def test_a_stale_attempt_that_finishes_last_cannot_change_the_output(
    ctx: WorkerContext, clock: ManualClock, taken_by: str
) -> None:
    """The job is taken from its first attempt while it reads its input; a second attempt, on
    another picture, runs to the end; then the stale first attempt finishes. The output object
    is the second attempt's, as the job says."""
    job = submitted(ctx)
    source = Path(job.input_uri.removeprefix("file://"))
    first_picture = source.read_bytes()
    reads = 0

    def take_the_job_and_finish_it() -> None:
        nonlocal reads
        reads += 1
        if reads > 1:
            return
        if taken_by == "reclaim":
            clock.advance(ctx.settings.lease_s + 1)  # the first worker's lease lapsed
        else:
            ctx.store.cancel(job.id, actor="cli:ops@laptop")
            ctx.store.requeue([job.id], actor="cli:ops@laptop")
        source.write_bytes(png_bytes((40, 30)))
        assert process_job(replace(racing, worker_name="w2"), job.id) is Outcome.SUCCEEDED
        source.write_bytes(first_picture)

    racing = replace(ctx, objects=InterruptedStore([ctx.settings.home], take_the_job_and_finish_it))

    assert process_job(racing, job.id) is Outcome.DISCARDED

    done = ctx.store.get(job.id)
    assert (done.status, done.worker, done.image_width, done.image_height) == (
        JobStatus.SUCCEEDED,
        "w2",
        40,
        30,
    )
    with Image.open(io.BytesIO(output_path(job).read_bytes())) as output:
        assert output.size == (40, 30)
    assert list(staging_folder(job).iterdir()) == []  # both staged objects deleted


def test_a_committed_output_is_published_by_the_next_attempt_without_running_the_model(
    ctx: WorkerContext, clock: ManualClock
) -> None:
    """The worker dies between the commit and the copy of the job's only attempt: the lease
    lapses, and the reclaiming attempt publishes the committed output (the input is gone: it
    does not run the model) instead of failing the job with worker_lost."""
    job = submitted(ctx, max_attempts=1)
    dying = replace(ctx, objects=DyingCopyStore([ctx.settings.home]))
    with pytest.raises(WorkerKilled):
        process_job(dying, job.id)
    committed = ctx.store.get(job.id)
    staged = committed.staged_output
    assert (committed.status, staged is not None) == (JobStatus.RUNNING, True)
    assert staged is not None
    staged_bytes = Path(staged.uri.removeprefix("file://")).read_bytes()
    assert not output_path(job).exists()
    Path(job.input_uri.removeprefix("file://")).unlink()
    clock.advance(ctx.settings.lease_s + 1)

    assert process_job(replace(ctx, worker_name="w2"), job.id) is Outcome.SUCCEEDED

    done = ctx.store.get(job.id)
    assert (done.status, done.attempts, done.worker) == (JobStatus.SUCCEEDED, 2, "w2")
    assert (done.model, done.image_width, done.image_height) == ("standin:0@standin", 80, 60)
    assert done.timings == staged.timings
    assert done.staged_output is None
    assert output_path(job).read_bytes() == staged_bytes
    assert list(staging_folder(job).iterdir()) == []
    events = ctx.store.events(job.id)
    assert [event.kind for event in events] == [
        EventKind.CREATED,
        EventKind.STARTED,
        EventKind.RECLAIMED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]
    assert events[-1].details == {
        "attempt": 2,
        "staged_attempt": 1,
        "staged_output_uri": staged.uri,
    }


def test_a_publish_that_fails_transiently_is_retried_and_the_retry_publishes(
    ctx: WorkerContext, clock: ManualClock, broker: MemoryBroker
) -> None:
    job = submitted(ctx)
    unavailable = replace(ctx, objects=UnavailableCopyStore([ctx.settings.home]))

    assert process_job(unavailable, job.id) is Outcome.RETRYING

    retrying = ctx.store.get(job.id)
    assert retrying.status is JobStatus.RETRYING
    assert retrying.staged_output is not None
    assert [message.job_id for message in broker.take_sent()] == [job.id]
    Path(job.input_uri.removeprefix("file://")).unlink()  # the retry does not run the model
    clock.advance(ctx.settings.retry_backoff_max_s + 1)

    assert process_job(ctx, job.id) is Outcome.SUCCEEDED

    done = ctx.store.get(job.id)
    assert (done.status, done.attempts, done.image_width) == (JobStatus.SUCCEEDED, 2, 80)
    staged_path = Path(retrying.staged_output.uri.removeprefix("file://"))
    assert not staged_path.exists()
    with Image.open(io.BytesIO(output_path(job).read_bytes())) as output:
        assert output.size == (80, 60)


def test_a_committed_output_whose_staged_object_expired_is_made_again(
    ctx: WorkerContext, clock: ManualClock
) -> None:
    """The staged object of a committed output that nobody published is gone (a lifecycle
    rule expired it): the next attempt runs the model and publishes its own output."""
    job = submitted(ctx, max_attempts=1)
    with pytest.raises(WorkerKilled):
        process_job(replace(ctx, objects=DyingCopyStore([ctx.settings.home])), job.id)
    expired = ctx.store.get(job.id).staged_output
    assert expired is not None
    Path(expired.uri.removeprefix("file://")).unlink()
    clock.advance(ctx.settings.lease_s + 1)

    assert process_job(replace(ctx, worker_name="w2"), job.id) is Outcome.SUCCEEDED

    done = ctx.store.get(job.id)
    assert (done.status, done.attempts, done.image_width) == (JobStatus.SUCCEEDED, 2, 80)
    assert ctx.store.events(job.id)[-1].details == {
        "attempt": 2,
        "staged_attempt": 2,
        "staged_output_uri": ANY,
    }
    with Image.open(io.BytesIO(output_path(job).read_bytes())) as output:
        assert output.size == (80, 60)
    assert list(staging_folder(job).iterdir()) == []
