"""The job store in memory: a test double with the SQL store's behaviour, as dramatiq's
`StubBroker` is for its brokers.

It passes the same contract tests as `SqlJobStore` (`tests/test_jobstore.py`): the same
transitions, guards, errors, history and orderings, so the processor, recovery and the command
line can be tested without a database. It keeps nothing beyond the object's life and is safe to
share between threads (one lock), never between processes.

Jobs are immutable `Job` snapshots, replaced whole by each change; a guard is a predicate on the
current snapshot, as the SQL store's is a WHERE clause on the row.
"""

from __future__ import annotations

import builtins
import itertools
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from toonq.shared.errors import (
    InvalidRequestError,
    InvalidTransitionError,
    JobNotFoundError,
    WorkerLostError,
)
from toonq.shared.job import (
    CANCELLABLE_STATUSES,
    REQUEUEABLE_STATUSES,
    WAITING_STATUSES,
    Claim,
    EventKind,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    aware,
    iso_utc,
    parse_status,
    utc_now,
)

#: Whether a job's current snapshot allows a change: what a WHERE clause is to the SQL store.
Guard = Callable[[Job], bool]


def _unguarded(_: Job) -> bool:
    """For a change decided on the snapshot just read under the lock, which is still current:
    what the SQL store's guards check against concurrent sessions holds by construction."""
    return True


def _attempt_guard(claim: Claim) -> Guard:
    """Whether the claimed attempt is still the job's current one (as the SQL store's
    `attempt_guard`: status, attempt and start time)."""

    def current(job: Job) -> bool:
        return (
            job.status is JobStatus.RUNNING
            and job.attempts == claim.attempt
            and job.started_at == claim.job.started_at
        )

    return current


def _before(value: datetime | None, limit: datetime) -> bool:
    """`value < limit`, false for a missing value (as SQL's comparison with NULL)."""
    return value is not None and value < limit


def _stored(value: Any) -> Any:
    """`value` as the store keeps it: datetimes in UTC (naive ones refused, as by the SQL
    schema), mappings read-only copies."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: toonq stores aware UTC datetimes only")
        return value.astimezone(UTC)
    if isinstance(value, Mapping):
        return MappingProxyType(dict(value))
    return value


def _most_urgent_first(jobs: Iterable[Job], limit: int) -> list[Job]:
    return sorted(jobs, key=lambda job: (-job.priority, job.created_at))[:limit]


class InMemoryJobStore:
    """Creates, reads and transitions jobs held in memory. Thread-safe: one lock."""

    def __init__(self, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[uuid.UUID, Job] = {}
        self._events: dict[uuid.UUID, builtins.list[JobEvent]] = {}
        self._event_ids = itertools.count(1)

    # --- Submissions ------------------------------------------------------------------------------

    def create(self, spec: JobSpec, *, actor: str) -> tuple[Job, bool]:
        """Create a job; returns (job, created). A repeated idempotency key returns the existing
        job with created=False, or raises IdempotencyConflictError if its parameters differ."""
        (result,) = self.create_many([spec], actor=actor)
        return result

    def create_many(
        self, specs: Iterable[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        """Create jobs all at once: a conflict in any of them creates none."""
        specs = builtins.list(specs)
        with self._lock:
            by_key = {job.idempotency_key: job for job in self._jobs.values()}
            results: builtins.list[tuple[Job, bool]] = []
            for spec in specs:
                existing = (
                    None if spec.idempotency_key is None else by_key.get(spec.idempotency_key)
                )
                if existing is not None:
                    results.append((existing.reuse_for(spec), False))
                    continue
                if spec.id in self._jobs or any(job.id == spec.id for job, _ in results):
                    raise InvalidRequestError(f"job {spec.id} already exists")
                job = _new_job(spec, self._clock())
                if spec.idempotency_key is not None:
                    by_key[spec.idempotency_key] = job
                results.append((job, True))
            # Nothing was written until every spec passed.
            for job, created in results:
                if created:
                    self._jobs[job.id] = job
                    self._events[job.id] = []
                    self._event(job.id, EventKind.CREATED, actor=actor, at=job.created_at)
            return results

    # --- Reads ------------------------------------------------------------------------------------

    def get(self, job_id: uuid.UUID) -> Job:
        with self._lock:
            return self._load(job_id)

    def list(
        self,
        status: JobStatus | str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally filtered by status, error code and creation time."""
        wanted = None if status is None else parse_status(status)
        with self._lock:
            found = self._matching(wanted, error_code, aware(since, "since"))
        found.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        return found[:limit]

    def events(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""
        with self._lock:
            self._load(job_id)
            return builtins.list(self._events[job_id])

    # --- Administration ---------------------------------------------------------------------------

    def cancel(self, job_id: uuid.UUID, *, actor: str, reason: str | None = None) -> Job:
        """Cancel a queued, retrying or running job. A running job's worker finds out when it
        tries to record its outcome (which is then discarded)."""
        with self._lock:
            now = self._clock()
            cancelled = self._transition(
                job_id,
                EventKind.CANCELLED,
                lambda job: job.status in CANCELLABLE_STATUSES,
                actor=actor,
                at=now,
                reason=reason,
                finished_at=now,
                next_attempt_at=None,
                lease_expires_at=None,
                enqueued_at=None,
            )
            job = self._load(job_id)
            if not cancelled:
                raise InvalidTransitionError(
                    f"job {job_id} is {job.status}: only queued, retrying or running jobs "
                    "can be cancelled"
                )
            return job

    def requeue(
        self,
        job_ids: Iterable[uuid.UUID] | None = None,
        *,
        status: JobStatus | str = JobStatus.FAILED,
        error_code: str | None = None,
        since: datetime | None = None,
        actor: str,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> builtins.list[Job]:
        """Send failed or cancelled jobs back to the queue with fresh attempts.

        Selects `job_ids` (all of which must be failed or cancelled, or nothing is written), or,
        without ids, the jobs matching the filters. Returns the jobs as requeued, oldest first; a
        dry run returns them as they are and writes nothing.
        """
        with self._lock:
            if job_ids is not None:
                jobs = self._jobs_to_requeue(builtins.list(job_ids))
            else:
                jobs = self._jobs_matching(parse_status(status), error_code, aware(since, "since"))
            if dry_run:
                return jobs
            now = self._clock()
            for job in jobs:
                self._transition(
                    job.id,
                    EventKind.REQUEUED,
                    _unguarded,
                    actor=actor,
                    at=now,
                    reason=reason,
                    details={
                        "from": job.status.value,
                        "error_code": job.error_code,
                        "attempts": job.attempts,
                    },
                    attempts=0,
                    error_code=None,
                    error_message=None,
                    worker=None,
                    started_at=None,
                    finished_at=None,
                    next_attempt_at=None,
                    lease_expires_at=None,
                    enqueued_at=None,
                )
            return [self._jobs[job.id] for job in jobs]

    def _jobs_to_requeue(self, job_ids: builtins.list[uuid.UUID]) -> builtins.list[Job]:
        jobs = []
        for job_id in dict.fromkeys(job_ids):  # each once, in the caller's order
            job = self._load(job_id)
            if job.status not in REQUEUEABLE_STATUSES:
                raise InvalidTransitionError(
                    f"job {job_id} is {job.status}: only failed or cancelled jobs can be requeued"
                )
            jobs.append(job)
        return sorted(jobs, key=lambda job: job.created_at)

    def _jobs_matching(
        self, status: JobStatus, error_code: str | None, since: datetime | None
    ) -> builtins.list[Job]:
        if status not in REQUEUEABLE_STATUSES:
            raise InvalidRequestError(
                f"only failed or cancelled jobs can be requeued, not {status}"
            )
        return sorted(self._matching(status, error_code, since), key=lambda job: job.created_at)

    # --- Attempts ---------------------------------------------------------------------------------

    def claim(self, job_id: uuid.UUID, *, worker: str, lease_s: float) -> Claim | None:
        """Start the next attempt of a job, or return None if it is not claimable: finished,
        cancelled, or running under a live lease (a duplicate message).

        A running job whose lease expired lost its worker: it is reclaimed, unless it already
        used all its attempts, in which case it fails with `worker_lost`.
        """
        with self._lock:
            now = self._clock()
            job = self._load(job_id)
            lost = job.status is JobStatus.RUNNING and _before(job.lease_expires_at, now)
            if lost:
                if job.attempts >= job.max_attempts:
                    self._fail_lost(job, worker=worker, now=now)
                    return None
                self._transition(
                    job_id,
                    EventKind.RECLAIMED,
                    _unguarded,
                    actor=worker,
                    at=now,
                    reason="the previous worker's lease expired",
                    details={"lost_worker": job.worker, "lost_attempt": job.attempts},
                )
            elif job.status not in WAITING_STATUSES:
                return None
            attempt = job.attempts + 1
            self._transition(
                job_id,
                EventKind.STARTED,
                _unguarded,
                actor=worker,
                at=now,
                details={"attempt": attempt},
                attempts=attempt,
                worker=worker,
                started_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s),
                next_attempt_at=None,
                enqueued_at=None,
            )
            return Claim(self._jobs[job_id], attempt)

    def _fail_lost(self, job: Job, *, worker: str, now: datetime) -> None:
        message = (
            f"worker {job.worker} stopped renewing its lease on attempt {job.attempts} "
            f"of {job.max_attempts}"
        )
        code = WorkerLostError.code
        self._transition(
            job.id,
            EventKind.FAILED,
            _unguarded,
            actor=worker,
            at=now,
            reason=message,
            details={"error_code": code, "attempt": job.attempts, "lost_worker": job.worker},
            error_code=code,
            error_message=message,
            finished_at=now,
            lease_expires_at=None,
        )

    def mark_succeeded(
        self,
        claim: Claim,
        *,
        model_name: str,
        model_revision: str | None,
        image_width: int,
        image_height: int,
        timings: Mapping[str, float],
    ) -> bool:
        """Record success; False (and nothing written) if the claim is no longer current."""
        with self._lock:
            now = self._clock()
            return self._transition(
                claim.job.id,
                EventKind.SUCCEEDED,
                _attempt_guard(claim),
                actor=claim.worker,
                at=now,
                details={"attempt": claim.attempt},
                model_name=model_name,
                model_revision=model_revision,
                image_width=image_width,
                image_height=image_height,
                timings=timings,
                error_code=None,
                error_message=None,
                finished_at=now,
                lease_expires_at=None,
            )

    def mark_retrying(
        self, claim: Claim, *, error_code: str, error_message: str, next_attempt_at: datetime
    ) -> bool:
        """Schedule another attempt at `next_attempt_at`; False if the claim is no longer
        current. Sending the delayed message is the caller's job (then `mark_enqueued`)."""
        with self._lock:
            return self._transition(
                claim.job.id,
                EventKind.RETRIED,
                _attempt_guard(claim),
                actor=claim.worker,
                at=self._clock(),
                reason=error_message,
                details={
                    "error_code": error_code,
                    "attempt": claim.attempt,
                    "next_attempt_at": iso_utc(next_attempt_at),
                },
                error_code=error_code,
                error_message=error_message,
                next_attempt_at=next_attempt_at,
                lease_expires_at=None,
                enqueued_at=None,
            )

    def mark_failed(self, claim: Claim, *, error_code: str, error_message: str) -> bool:
        """Record a final failure; False (and nothing written) if the claim is no longer current."""
        with self._lock:
            now = self._clock()
            return self._transition(
                claim.job.id,
                EventKind.FAILED,
                _attempt_guard(claim),
                actor=claim.worker,
                at=now,
                reason=error_message,
                details={"error_code": error_code, "attempt": claim.attempt},
                error_code=error_code,
                error_message=error_message,
                finished_at=now,
                lease_expires_at=None,
            )

    def hand_back(self, claim: Claim, *, reason: str) -> Job | None:
        """Give a running attempt back to the queue unfinished (its worker is shutting down):
        the job waits again without having spent the attempt. Returns the queued job, or None
        if the claim is no longer current (the attempt finished or was taken away)."""
        with self._lock:
            if not self._transition(
                claim.job.id,
                EventKind.HANDED_BACK,
                _attempt_guard(claim),
                actor=claim.worker,
                at=self._clock(),
                reason=reason,
                details={"handed_back_attempt": claim.attempt},
                attempts=claim.attempt - 1,
                worker=None,
                started_at=None,
                lease_expires_at=None,
                enqueued_at=None,
            ):
                return None
            return self._jobs[claim.job.id]

    def extend_lease(self, claim: Claim, lease_s: float) -> bool:
        """Heartbeat of a long attempt; False if the claim is no longer current."""
        with self._lock:
            now = self._clock()
            return self._update(
                claim.job.id,
                _attempt_guard(claim),
                lease_expires_at=now + timedelta(seconds=lease_s),
                updated_at=now,
            )

    # --- Delivery ---------------------------------------------------------------------------------

    def mark_enqueued(self, job_id: uuid.UUID) -> bool:
        """Record that a wake-up message was handed to the broker for a waiting job, or for a
        running job whose lease expired (the message that will reclaim it)."""
        with self._lock:
            now = self._clock()
            return self._update(
                job_id,
                lambda job: (
                    job.status in WAITING_STATUSES
                    or (job.status is JobStatus.RUNNING and _before(job.lease_expires_at, now))
                ),
                enqueued_at=now,
                updated_at=now,
            )

    def due_for_recovery(
        self,
        *,
        unsent_grace_s: float,
        lost_after_s: float,
        now: datetime | None = None,
        limit: int = 1000,
    ) -> builtins.list[Job]:
        """Jobs that need a new wake-up message, most urgent first (as `SqlJobStore`'s: never
        sent once `unsent_grace_s` passed since they became due, sent longer than `lost_after_s`
        ago, or running under an expired lease with no message sent for it lately)."""
        now = aware(now, "now") or self._clock()
        unsent_before = now - timedelta(seconds=unsent_grace_s)
        lost_before = now - timedelta(seconds=lost_after_s)

        def due(job: Job) -> bool:
            unsent = job.enqueued_at is None
            if job.status is JobStatus.QUEUED:
                return (unsent and _before(job.updated_at, unsent_before)) or _before(
                    job.enqueued_at, lost_before
                )
            if job.status is JobStatus.RETRYING:
                return (unsent and _before(job.next_attempt_at, unsent_before)) or (
                    _before(job.enqueued_at, lost_before)
                    and _before(job.next_attempt_at, lost_before)
                )
            if job.status is JobStatus.RUNNING:
                return _before(job.lease_expires_at, now) and (
                    unsent or _before(job.enqueued_at, lost_before)
                )
            return False

        with self._lock:
            return _most_urgent_first(filter(due, self._jobs.values()), limit)

    def waiting_after_send(
        self, *, sent_before: datetime, due_before: datetime, limit: int = 1000
    ) -> builtins.list[Job]:
        """Jobs still waiting for a worker although their message went out long ago: queued
        with the message sent before `sent_before`, or retrying and due before `due_before`."""

        def waiting(job: Job) -> bool:
            if job.status is JobStatus.QUEUED:
                return _before(job.enqueued_at, sent_before)
            return (
                job.status is JobStatus.RETRYING
                and job.enqueued_at is not None
                and _before(job.next_attempt_at, due_before)
            )

        with self._lock:
            return _most_urgent_first(filter(waiting, self._jobs.values()), limit)

    # --- Changes (the caller holds the lock) ------------------------------------------------------

    def _matching(
        self, status: JobStatus | None, error_code: str | None, since: datetime | None
    ) -> builtins.list[Job]:
        return [
            job
            for job in self._jobs.values()
            if (status is None or job.status is status)
            and (error_code is None or job.error_code == error_code)
            and (since is None or job.created_at >= since)
        ]

    def _load(self, job_id: uuid.UUID) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"job {job_id} not found")
        return job

    def _update(self, job_id: uuid.UUID, guard: Guard, **values: Any) -> bool:
        """Replace the job's snapshot with `values` if `guard` holds; True if it did."""
        job = self._jobs.get(job_id)
        if job is None or not guard(job):
            return False
        self._jobs[job_id] = replace(job, **{name: _stored(v) for name, v in values.items()})
        return True

    def _transition(
        self,
        job_id: uuid.UUID,
        kind: EventKind,
        guard: Guard,
        *,
        actor: str,
        at: datetime,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        **values: Any,
    ) -> bool:
        """Move the job to the status `kind` leads to if `guard` holds, and record the event;
        False (and nothing written) if the guard did not hold."""
        if not self._update(job_id, guard, status=kind.status, updated_at=at, **values):
            return False
        self._event(job_id, kind, actor=actor, at=at, reason=reason, details=details)
        return True

    def _event(
        self,
        job_id: uuid.UUID,
        kind: EventKind,
        *,
        actor: str,
        at: datetime,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self._events[job_id].append(
            JobEvent(
                id=next(self._event_ids),
                job_id=job_id,
                at=_stored(at),
                kind=kind,
                actor=actor,
                reason=reason,
                details=_stored(details),
            )
        )


def _new_job(spec: JobSpec, now: datetime) -> Job:
    now = _stored(now)
    return Job(
        id=spec.id,
        status=EventKind.CREATED.status,
        idempotency_key=spec.idempotency_key,
        input_uri=spec.input_uri,
        output_uri=spec.output_uri,
        params=spec.params,
        priority=spec.priority,
        attempts=0,
        max_attempts=spec.max_attempts,
        error_code=None,
        error_message=None,
        worker=None,
        model_name=None,
        model_revision=None,
        image_width=None,
        image_height=None,
        timings=None,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        next_attempt_at=None,
        lease_expires_at=None,
        enqueued_at=None,
    )
