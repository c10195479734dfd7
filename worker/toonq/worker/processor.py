"""One job, start to finish: claim -> fetch -> prepare -> (GPU loop) -> finish -> stage -> commit
-> publish -> record.

Many jobs run this at once, each in its own thread: their downloads, decodes, encodes and
uploads overlap, while the model runs in the one GPU loop that batches them. Each step is a call
into a part that knows one thing (the job store, the object store, the engine, the batcher);
this module only decides what an outcome means for the job:

* success: the output is uploaded to a key of this attempt's own, committed to the job (a
  compare-and-set on the claim: one output per job), copied to the job's output URI, and only
  then is the job marked succeeded. An attempt that finds an output committed by an earlier one
  publishes that output instead of running the model. So the object at a job's output URI is
  only ever a copy of its one committed output, however many attempts ran;
* a permanent error: the job fails at once with the error's code;
* a transient error (or an unexpected one): the job is retried with backoff while attempts
  remain, then fails with the last error's code;
* the GPU loop stopped (the device failed batch after batch): the job goes back to the queue
  for another worker, without spending its attempt.

The claim of a tenant's job releases the tenant's next held job (`toonq.shared.tenants`), and so
does its end where a cap on the tenant's jobs in flight applies.

An outcome the database cannot take at once (an outage of a few seconds) is written again with
backoff while the lease is renewed, for up to a lease: a retried message would find the job still
running under this worker's live lease and skip it, and the finished job would run again. Past
that the lease is left to lapse and the job is reclaimed as a lost worker's.

Every database write is a compare-and-set on (job, attempt), so a duplicated message, a stale
worker or a cancel that raced the work can never overwrite a recorded outcome.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from toonq.shared.choices import check_resolution
from toonq.shared.errors import (
    DatabaseUnavailableError,
    InputNotFoundError,
    InvalidRequestError,
    PermanentJobError,
    ToonqError,
    TransientJobError,
)
from toonq.shared.job import Claim, NotDue, Outcome, StagedOutput
from toonq.shared.jobstore import JobStore
from toonq.shared.logging import get_logger
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import ObjectStore, UriPolicy
from toonq.shared.storage.uri import staged_output_uri
from toonq.worker import metrics
from toonq.worker.batcher import Batcher, BatcherStoppedError
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.matting import MatteResult, MattingEngine
from toonq.worker.lease import ClaimLostError, LeaseKeeper
from toonq.worker.matte_input import matte_input
from toonq.worker.memory import MemoryBudget
from toonq.worker.retries import backoff_delay

log = get_logger(__name__)


@dataclass(frozen=True)
class WorkerContext:
    """Everything a worker process holds for the whole of its life."""

    settings: Settings
    store: JobStore
    objects: ObjectStore
    #: Checked again before each attempt: a job row may come from an older producer.
    uris: UriPolicy
    engine: MattingEngine
    batcher: Batcher
    cpu: CpuSlots
    memory: MemoryBudget
    leases: LeaseKeeper
    sender: Sender
    worker_name: str


#: A retry message may arrive this much before its job is due (clock skew between hosts).
EARLY_TOLERANCE_S = 1.0


def process_job(ctx: WorkerContext, job_id: uuid.UUID) -> Outcome:
    claim = ctx.store.claim(
        job_id,
        worker=ctx.worker_name,
        lease_s=ctx.settings.lease_s,
        early_tolerance_s=EARLY_TOLERANCE_S,
    )
    if isinstance(claim, NotDue):
        # A duplicate arrived before the backoff ran out: keep the backoff, send the job's
        # message again for when it is due rather than dropping it.
        early_s = (claim.due_at - ctx.store.now()).total_seconds()
        log.info("job_not_due", early_s=round(early_s, 2))
        ctx.sender.send(claim.job, countdown=max(early_s, 0.0))
        return _counted(Outcome.SKIPPED)
    if claim is None:
        log.info("job_skipped", reason="not claimable (duplicate message or finished job)")
        return _counted(Outcome.SKIPPED)
    log.info("job_started", attempt=claim.attempt, input_uri=claim.job.input_uri)
    tenant = claim.job.tenant
    if tenant is None:
        return _attempt(ctx, claim)
    _release(ctx, tenant)  # the claim freed one of the tenant's queue slots
    outcome = _attempt(ctx, claim)
    metrics.record_tenant_job(tenant, outcome)
    if ctx.sender.tenants.max_in_flight:
        _release(ctx, tenant)  # and the job's end one of its jobs in flight
    return outcome


def _release(ctx: WorkerContext, tenant: str) -> None:
    """Send the tenant's next held jobs. Best effort: should this fail, the recovery pass
    releases them."""
    try:
        ctx.sender.release(tenant)
    except Exception:
        log.warning("tenant_release_failed", tenant=tenant, exc_info=True)


def _attempt(ctx: WorkerContext, claim: Claim) -> Outcome:
    """Run the claimed attempt and record its outcome."""
    try:
        with ctx.leases.holding(claim), metrics.in_flight():
            staged = _publish_committed(ctx, claim) or _run_and_publish(ctx, claim)
    except ClaimLostError:
        # Cancelled, requeued or reclaimed while it ran: whoever holds the job now records it.
        log.warning("job_abandoned", reason="the claim is no longer current")
        return _counted(Outcome.DISCARDED)
    except BatcherStoppedError as exc:
        if ctx.leases.hand_back(claim, ctx.sender, reason=str(exc)):
            return Outcome.HANDED_BACK  # counted by the hand-back
        return _counted(Outcome.DISCARDED)
    except (PermanentJobError, InvalidRequestError) as exc:
        # InvalidRequestError: a job row whose URI the policy refuses (written by an older
        # producer, or before the policy changed): retrying cannot help.
        return _fail(ctx, claim, exc)
    except TransientJobError as exc:
        return _retry_or_fail(ctx, claim, exc)
    except Exception as exc:
        # A bug or a device fault (e.g. CUDA out of memory): bounded retries, then a typed failure.
        log.exception("job_crashed")
        return _retry_or_fail(ctx, claim, ToonqError(f"{type(exc).__name__}: {exc}"))
    if not _recorded(ctx, claim, lambda: ctx.store.mark_succeeded(claim, staged)):
        # Whoever holds the job now publishes the same committed output: its staged object stays.
        log.warning("job_outcome_discarded", outcome="succeeded")
        return _counted(Outcome.DISCARDED)
    # Counted as soon as it is recorded, before the staged object's deletion (a request to S3).
    metrics.observe_stages(staged.timings)
    outcome = _counted(Outcome.SUCCEEDED)
    _delete_staged(ctx, staged.uri)
    log.info("job_succeeded", output_uri=claim.job.output_uri, timings_ms=dict(staged.timings))
    return outcome


def _publish_committed(ctx: WorkerContext, claim: Claim) -> StagedOutput | None:
    """Publish the output an earlier attempt committed and stopped before publishing; None if
    there is none, or if its staged object is gone (expired): no copy of it can land any more,
    so the job forgets it and this attempt runs."""
    staged = claim.job.staged_output
    if staged is None:
        return None
    log.info("job_publishing", attempt=claim.attempt, staged_attempt=staged.attempt)
    # Read from the job's row, as `_run` checks the URIs of an output it stages itself.
    ctx.uris.check_output(claim.job.output_uri)
    ctx.uris.check_staged(staged.uri)
    try:
        _publish(ctx, claim, staged)
    except InputNotFoundError:
        log.warning("staged_output_missing", staged_output_uri=staged.uri)
        if not ctx.store.drop_output(claim, staged):
            raise ClaimLostError.of(claim) from None
        return None
    return staged


def _run_and_publish(ctx: WorkerContext, claim: Claim) -> StagedOutput:
    staged = _run(ctx, claim)
    _publish(ctx, claim, staged)
    return staged


def _run(ctx: WorkerContext, claim: Claim) -> StagedOutput:
    """The attempt's work, up to its output committed to the job; between steps it stops
    (ClaimLostError) if its claim was lost."""
    job = claim.job
    # A row written by an older producer, or under another configuration, is not trusted.
    ctx.uris.check_input(job.input_uri)
    ctx.uris.check_output(job.output_uri)
    check_resolution(job.params.resolution, ctx.settings.max_resolution)
    staged_uri = staged_output_uri(job.output_uri, job.id, claim.attempt)
    ctx.uris.check_staged(staged_uri)
    began = start = time.perf_counter()
    data = ctx.objects.get(job.input_uri, max_bytes=ctx.settings.max_input_bytes)
    download_ms = (time.perf_counter() - start) * 1000
    ctx.leases.check(claim)
    # Waited for before a CPU slot is taken, and held until the images are gone: once the
    # output is uploaded, or once an error has left `_matte_and_store`, whose frame held them.
    need, what = ctx.engine.host_bytes(data, job.params)
    with ctx.memory.reserved(need, what=what):
        try:
            result = _matte_and_store(ctx, claim, data, staged_uri)
        except BaseException as exc:
            # The traceback keeps that frame, and its images, alive: they go with the budget.
            traceback.clear_frames(exc.__traceback__)
            raise
    timings = {
        "queue_wait": _queue_wait_ms(claim),
        "download": download_ms,
        **result.timings_ms,
        "total": (time.perf_counter() - began) * 1000,
    }
    staged = StagedOutput(
        uri=staged_uri,
        attempt=claim.attempt,
        model_name=ctx.engine.model_name,
        model_revision=ctx.engine.model_revision,
        image_width=result.width,
        image_height=result.height,
        timings={stage: round(ms, 2) for stage, ms in timings.items()},
        content_type=result.content_type,
        frames=result.frames,
        changes=result.changes,
    )
    if not ctx.store.commit_output(claim, staged):
        # Another attempt holds the job now: this output is nobody's.
        _delete_staged(ctx, staged_uri)
        raise ClaimLostError.of(claim)
    return staged


def _matte_and_store(ctx: WorkerContext, claim: Claim, data: bytes, staged_uri: str) -> MatteResult:
    """Decode, matte, encode and upload to `staged_uri`; what it returns no longer holds the
    output's bytes."""
    result = matte_input(ctx.engine, ctx.batcher, ctx.cpu, data, claim.job.params)
    ctx.leases.check(claim)
    start = time.perf_counter()
    ctx.objects.put(staged_uri, result.data, content_type=result.content_type)
    result.timings_ms["upload"] = (time.perf_counter() - start) * 1000
    result.data = b""
    return result


def _publish(ctx: WorkerContext, claim: Claim, staged: StagedOutput) -> None:
    """Copy the job's committed output, whose URIs were checked, to its output URI: the one
    write any attempt makes there, always of the same object, so a late copy by a stale
    attempt changes nothing."""
    ctx.leases.check(claim)
    ctx.objects.copy(staged.uri, claim.job.output_uri)


def _delete_staged(ctx: WorkerContext, uri: str) -> None:
    """Best effort: a staged object left behind is nobody's output, and expires under the
    bucket's lifecycle rule for staging folders."""
    try:
        ctx.objects.delete(uri)
    except Exception:
        log.warning("staged_output_not_deleted", staged_output_uri=uri, exc_info=True)


def _queue_wait_ms(claim: Claim) -> float:
    """From when the job's message was sent (or its retry came due) to its claim."""
    assert claim.job.started_at is not None, "a claimed job has started"
    if claim.waited_since is None:
        return 0.0
    return max(0.0, (claim.job.started_at - claim.waited_since).total_seconds() * 1000)


def _fail(
    ctx: WorkerContext, claim: Claim, exc: ToonqError, *, message: str | None = None
) -> Outcome:
    message = message or exc.message
    if not _recorded(
        ctx, claim, lambda: ctx.store.mark_failed(claim, error_code=exc.code, error_message=message)
    ):
        log.warning("job_outcome_discarded", outcome="failed")
        return _counted(Outcome.DISCARDED)
    log.warning("job_failed", error_code=exc.code, error_message=message, attempt=claim.attempt)
    return _counted(Outcome.FAILED, exc.code)


def _retry_or_fail(ctx: WorkerContext, claim: Claim, exc: ToonqError) -> Outcome:
    if claim.attempt >= claim.job.max_attempts:
        return _fail(
            ctx, claim, exc, message=f"gave up after {claim.attempt} attempts: {exc.message}"
        )
    delay = backoff_delay(
        claim.attempt,
        base_s=ctx.settings.retry_backoff_s,
        cap_s=ctx.settings.retry_backoff_max_s,
    )
    next_attempt_at = ctx.store.now() + timedelta(seconds=delay)
    if not _recorded(
        ctx,
        claim,
        lambda: ctx.store.mark_retrying(
            claim, error_code=exc.code, error_message=exc.message, next_attempt_at=next_attempt_at
        ),
    ):
        log.warning("job_outcome_discarded", outcome="retrying")
        return _counted(Outcome.DISCARDED)
    log.warning(
        "job_retrying",
        error_code=exc.code,
        error_message=exc.message,
        attempt=claim.attempt,
        delay_s=round(delay, 2),
    )
    # The message names the job and its priority, which no transition changes: no read again.
    ctx.sender.send(claim.job, countdown=delay)
    return _counted(Outcome.RETRYING, exc.code)


def _recorded(ctx: WorkerContext, claim: Claim, write: Callable[[], bool]) -> bool:
    """`write` the attempt's outcome (a compare-and-set on the claim; True if it was written),
    again with backoff while the database is unavailable and the lease kept renewed, for up to
    a lease; then DatabaseUnavailableError, and the lease lapses."""
    give_up_at = time.monotonic() + ctx.settings.lease_s
    tries = 0
    with ctx.leases.holding(claim):
        while True:
            try:
                return write()
            except DatabaseUnavailableError as exc:
                tries += 1
                delay = backoff_delay(
                    tries, base_s=ctx.settings.retry_backoff_s, cap_s=ctx.settings.lease_s / 3
                )
                if time.monotonic() + delay > give_up_at:
                    raise
                log.warning("outcome_not_recorded", error=str(exc), delay_s=round(delay, 2))
                time.sleep(delay)


def _counted(outcome: Outcome, error_code: str = "") -> Outcome:
    metrics.record_job(outcome, error_code)
    return outcome
