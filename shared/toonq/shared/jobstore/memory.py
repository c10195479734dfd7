"""The job store in memory: a test double with the SQL store's behaviour, as dramatiq's
`StubBroker` is for its brokers.

It passes the same contract tests as `SqlJobStore` (`tests/integration/test_jobstore.py`): the
same transitions, guards, errors, history and orderings, so the processor, recovery and the
command line can be tested without a database. It keeps nothing beyond the object's life and is
safe to share between threads (one lock), never between processes.

Jobs are immutable `Job` snapshots, replaced whole by each change; a guard is a predicate on the
current snapshot, as the SQL store's is a WHERE clause on the row.
"""

from __future__ import annotations

import builtins
import itertools
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from toonq.shared.errors import InvalidRequestError, JobNotFoundError
from toonq.shared.job import (
    CANCELLABLE_STATUSES,
    WAITING_STATUSES,
    Claim,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    aware,
    parse_status,
    utc_now,
)
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.selections import Selection
from toonq.shared.jobstore.transitions import Transition

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


def _stored_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _stored(value) for name, value in values.items()}


#: A job's fields before its creation sets them.
_EMPTY_JOB: Mapping[str, Any] = dict.fromkeys(f.name for f in fields(Job))


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
            creations: builtins.list[tuple[Job, Transition]] = []
            for spec in specs:
                existing = (
                    None if spec.idempotency_key is None else by_key.get(spec.idempotency_key)
                )
                if existing is not None:
                    results.append((existing.reuse_for(spec), False))
                    continue
                if spec.id in self._jobs or any(job.id == spec.id for job, _ in results):
                    raise InvalidRequestError(f"job {spec.id} already exists")
                creation = transitions.created(spec, actor=actor, now=self._clock())
                job = Job(**{**_EMPTY_JOB, **_stored_values(creation.values)})
                if spec.idempotency_key is not None:
                    by_key[spec.idempotency_key] = job
                results.append((job, True))
                creations.append((job, creation))
            # Nothing was written until every spec passed.
            for job, creation in creations:
                self._jobs[job.id] = job
                self._events[job.id] = []
                self._record(job.id, creation)
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
            cancellation = transitions.cancelled(actor=actor, now=self._clock(), reason=reason)
            cancelled = self._apply(
                job_id, cancellation, lambda job: job.status in CANCELLABLE_STATUSES
            )
            job = self._load(job_id)
            if not cancelled:
                raise transitions.not_cancellable(job)
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
                jobs = self._jobs_matching(
                    transitions.requeue_filter(status), error_code, aware(since, "since")
                )
            if dry_run:
                return jobs
            now = self._clock()
            for job in jobs:
                requeue = transitions.requeued(job, actor=actor, now=now, reason=reason)
                self._apply(job.id, requeue, _unguarded)
            return [self._jobs[job.id] for job in jobs]

    def _jobs_to_requeue(self, job_ids: builtins.list[uuid.UUID]) -> builtins.list[Job]:
        jobs = []
        for job_id in dict.fromkeys(job_ids):  # each once, in the caller's order
            job = self._load(job_id)
            transitions.check_requeueable(job_id, job.status)
            jobs.append(job)
        return sorted(jobs, key=lambda job: job.created_at)

    def _jobs_matching(
        self, status: JobStatus, error_code: str | None, since: datetime | None
    ) -> builtins.list[Job]:
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
            if selections.lease_lost(now).matches(job):
                if job.attempts >= job.max_attempts:
                    self._apply(
                        job_id, transitions.worker_lost(job, worker=worker, now=now), _unguarded
                    )
                    return None
                self._apply(job_id, transitions.reclaimed(job, worker=worker, now=now), _unguarded)
            elif job.status not in WAITING_STATUSES:
                return None
            attempt = job.attempts + 1
            start = transitions.started(attempt, worker=worker, now=now, lease_s=lease_s)
            self._apply(job_id, start, _unguarded)
            return Claim(self._jobs[job_id], attempt)

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
            success = transitions.succeeded(
                claim,
                now=self._clock(),
                model_name=model_name,
                model_revision=model_revision,
                image_width=image_width,
                image_height=image_height,
                timings=timings,
            )
            return self._apply(claim.job.id, success, _attempt_guard(claim))

    def mark_retrying(
        self, claim: Claim, *, error_code: str, error_message: str, next_attempt_at: datetime
    ) -> bool:
        """Schedule another attempt at `next_attempt_at`; False if the claim is no longer
        current. Sending the delayed message is the caller's job (then `mark_enqueued`)."""
        with self._lock:
            retry = transitions.retried(
                claim,
                now=self._clock(),
                error_code=error_code,
                error_message=error_message,
                next_attempt_at=next_attempt_at,
            )
            return self._apply(claim.job.id, retry, _attempt_guard(claim))

    def mark_failed(self, claim: Claim, *, error_code: str, error_message: str) -> bool:
        """Record a final failure; False (and nothing written) if the claim is no longer current."""
        with self._lock:
            failure = transitions.failed(
                claim, now=self._clock(), error_code=error_code, error_message=error_message
            )
            return self._apply(claim.job.id, failure, _attempt_guard(claim))

    def hand_back(self, claim: Claim, *, reason: str) -> Job | None:
        """Give a running attempt back to the queue unfinished (its worker is shutting down):
        the job waits again without having spent the attempt. Returns the queued job, or None
        if the claim is no longer current (the attempt finished or was taken away)."""
        with self._lock:
            handing_back = transitions.handed_back(claim, now=self._clock(), reason=reason)
            if not self._apply(claim.job.id, handing_back, _attempt_guard(claim)):
                return None
            return self._jobs[claim.job.id]

    def extend_lease(self, claim: Claim, lease_s: float) -> bool:
        """Heartbeat of a long attempt; False if the claim is no longer current."""
        with self._lock:
            return self._update(
                claim.job.id,
                _attempt_guard(claim),
                **transitions.lease_extended(now=self._clock(), lease_s=lease_s),
            )

    # --- Delivery ---------------------------------------------------------------------------------

    def mark_enqueued(self, job_id: uuid.UUID) -> bool:
        """Record that a wake-up message was handed to the broker for a waiting job, or for a
        running job whose lease expired (the message that will reclaim it)."""
        with self._lock:
            now = self._clock()
            return self._update(job_id, selections.sendable(now).matches, **transitions.sent(now))

    def due_for_recovery(
        self,
        *,
        unsent_grace_s: float,
        lost_after_s: float,
        now: datetime | None = None,
        limit: int = 1000,
    ) -> builtins.list[Job]:
        """Jobs that need a new wake-up message (`selections.due_for_recovery`), most urgent
        first."""
        now = aware(now, "now") or self._clock()
        selection = selections.due_for_recovery(
            now, unsent_grace_s=unsent_grace_s, lost_after_s=lost_after_s
        )
        return self._most_urgent(selection, limit)

    def waiting_after_send(
        self, *, sent_before: datetime, due_before: datetime, limit: int = 1000
    ) -> builtins.list[Job]:
        """Jobs still waiting for a worker although their message went out long ago: queued
        with the message sent before `sent_before`, or retrying and due before `due_before`."""
        selection = selections.waiting_after_send(sent_before=sent_before, due_before=due_before)
        return self._most_urgent(selection, limit)

    def _most_urgent(self, selection: Selection, limit: int) -> builtins.list[Job]:
        with self._lock:
            found = builtins.list(filter(selection.matches, self._jobs.values()))
        return sorted(found, key=lambda job: (-job.priority, job.created_at))[:limit]

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
        self._jobs[job_id] = replace(job, **_stored_values(values))
        return True

    def _apply(self, job_id: uuid.UUID, transition: Transition, guard: Guard) -> bool:
        """Write `transition` if `guard` holds, with its event; False (and nothing written) if
        the guard did not hold."""
        if not self._update(job_id, guard, **transition.values):
            return False
        self._record(job_id, transition)
        return True

    def _record(self, job_id: uuid.UUID, transition: Transition) -> None:
        """Add `transition`'s event to the job's history."""
        event = _stored_values(transition.event)
        self._events[job_id].append(JobEvent(id=next(self._event_ids), job_id=job_id, **event))
