"""The job store's methods, written once over the few primitives each store implements.

A store opens a `Transaction` (`JobStore._transaction`) in which it loads, selects, inserts and
changes jobs: every change is a compare-and-set (`Transaction.update`) guarded by a `Selection`,
and every transition writes its event with it (`Transaction.apply`). What each transition writes
is `transitions`', which jobs a guard or a read selects `selections`'.
"""

from __future__ import annotations

import builtins
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from toonq.shared.errors import InvalidTransitionError
from toonq.shared.job import (
    WAITING_STATUSES,
    Claim,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    aware,
    parse_status,
)
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.selections import Order, Selection
from toonq.shared.jobstore.transitions import Transition

#: The most urgent first: what recovery sends first.
_MOST_URGENT: Order = ("-priority", "created_at")


class Transaction(ABC):
    """One unit of work on a store: all of its changes are written, or none."""

    @abstractmethod
    def load(self, job_id: uuid.UUID) -> Job:
        """The job as it is now; JobNotFoundError if there is none."""

    @abstractmethod
    def select(
        self, selection: Selection, order: Order, limit: int | None = None
    ) -> builtins.list[Job]:
        """The jobs `selection` matches, in `order`, at most `limit` of them."""

    @abstractmethod
    def with_keys(self, keys: Iterable[str]) -> dict[str, Job]:
        """The jobs created with these idempotency keys, by key."""

    @abstractmethod
    def events_of(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""

    @abstractmethod
    def insert(self, creation: Transition) -> Job:
        """Add the job `creation` writes, with its event."""

    @abstractmethod
    def update(self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]) -> bool:
        """Write `values` to the job if `guard` matches it; True if it did (the compare-and-set
        succeeded)."""

    @abstractmethod
    def record(self, job_id: uuid.UUID, transition: Transition) -> None:
        """Add `transition`'s event to the job's history."""

    def apply(self, job_id: uuid.UUID, guard: Selection, *steps: Transition) -> bool:
        """Write `steps` at once if `guard` matches the job, with their events in order; False
        (and nothing written) if it did not."""
        values = {name: value for step in steps for name, value in step.values.items()}
        if not self.update(job_id, guard, values):
            return False
        for step in steps:
            self.record(job_id, step)
        return True


class JobStore(ABC):
    """Creates, reads and transitions jobs."""

    def __init__(self, *, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Transaction]:
        """A new unit of work."""

    # --- Submissions ------------------------------------------------------------------------------

    def create(self, spec: JobSpec, *, actor: str) -> tuple[Job, bool]:
        """Create a job; returns (job, created). A repeated idempotency key returns the existing
        job with created=False, or raises IdempotencyConflictError if its parameters differ."""
        (result,) = self._create_at_once([spec], actor=actor)
        return result

    def create_many(
        self, specs: Iterable[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        """`create` for a batch, all at once, so an idempotency conflict writes nothing."""
        return self._create_at_once(builtins.list(specs), actor=actor)

    def _create_at_once(
        self, specs: builtins.list[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        keys = {spec.idempotency_key for spec in specs if spec.idempotency_key is not None}
        with self._transaction() as transaction:
            by_key = transaction.with_keys(sorted(keys))
            results: builtins.list[tuple[Job, bool]] = []
            for spec in specs:
                existing = (
                    None if spec.idempotency_key is None else by_key.get(spec.idempotency_key)
                )
                if existing is not None:
                    results.append((existing.reuse_for(spec), False))
                    continue
                job = transaction.insert(transitions.created(spec, actor=actor, now=self._clock()))
                if spec.idempotency_key is not None:
                    by_key[spec.idempotency_key] = job
                results.append((job, True))
            return results

    # --- Reads ------------------------------------------------------------------------------------

    def get(self, job_id: uuid.UUID) -> Job:
        with self._transaction() as transaction:
            return transaction.load(job_id)

    def list(
        self,
        status: JobStatus | str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally filtered by status, error code and creation time."""
        wanted = None if status is None else parse_status(status)
        selection = selections.filtered(wanted, error_code, aware(since, "since"))
        with self._transaction() as transaction:
            return transaction.select(selection, ("-created_at", "-id"), limit)

    def events(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""
        with self._transaction() as transaction:
            transaction.load(job_id)
            return transaction.events_of(job_id)

    # --- Administration ---------------------------------------------------------------------------

    def cancel(self, job_id: uuid.UUID, *, actor: str, reason: str | None = None) -> Job:
        """Cancel a queued, retrying or running job. A running job's worker finds out when it
        tries to record its outcome (which is then discarded)."""
        with self._transaction() as transaction:
            cancellation = transitions.cancelled(actor=actor, now=self._clock(), reason=reason)
            cancelled = transaction.apply(job_id, selections.cancellable(), cancellation)
            job = transaction.load(job_id)
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
        with self._transaction() as transaction:
            if job_ids is not None:
                jobs = _jobs_to_requeue(transaction, builtins.list(job_ids))
            else:
                selection = selections.filtered(
                    transitions.requeue_filter(status), error_code, aware(since, "since")
                )
                jobs = transaction.select(selection, ("created_at",))
            if dry_run:
                return jobs
            now = self._clock()
            requeued = []
            for job in jobs:
                requeue = transitions.requeued(job, actor=actor, now=now, reason=reason)
                if not transaction.apply(job.id, selections.in_status(job.status), requeue):
                    if job_ids is None:
                        continue  # changed under us (e.g. requeued by another operator)
                    raise InvalidTransitionError(f"job {job.id} changed while requeueing")
                requeued.append(transaction.load(job.id))
            return requeued

    # --- Attempts ---------------------------------------------------------------------------------

    def claim(self, job_id: uuid.UUID, *, worker: str, lease_s: float) -> Claim | None:
        """Start the next attempt of a job, or return None if it is not claimable: finished,
        cancelled, or running under a live lease (a duplicate message).

        A running job whose lease expired lost its worker: it is reclaimed, unless it already
        used all its attempts, in which case it fails with `worker_lost`.
        """
        with self._transaction() as transaction:
            now = self._clock()
            job = transaction.load(job_id)
            steps: builtins.list[Transition] = []
            if selections.lease_lost(now).matches(job):
                guard = selections.as_read(job, lease_lost_at=now)
                if job.attempts >= job.max_attempts:
                    failure = transitions.worker_lost(job, worker=worker, now=now)
                    transaction.apply(job_id, guard, failure)
                    return None
                steps.append(transitions.reclaimed(job, worker=worker, now=now))
            elif job.status in WAITING_STATUSES:
                guard = selections.as_read(job)
            else:
                return None
            attempt = job.attempts + 1
            steps.append(transitions.started(attempt, worker=worker, now=now, lease_s=lease_s))
            if not transaction.apply(job_id, guard, *steps):
                return None  # another worker won the race
            return Claim(transaction.load(job_id), attempt)

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
        return self._finish_attempt(
            claim,
            transitions.succeeded(
                claim,
                now=self._clock(),
                model_name=model_name,
                model_revision=model_revision,
                image_width=image_width,
                image_height=image_height,
                timings=timings,
            ),
        )

    def mark_retrying(
        self, claim: Claim, *, error_code: str, error_message: str, next_attempt_at: datetime
    ) -> bool:
        """Schedule another attempt at `next_attempt_at`; False if the claim is no longer
        current. Sending the delayed message is the caller's job (then `mark_enqueued`)."""
        return self._finish_attempt(
            claim,
            transitions.retried(
                claim,
                now=self._clock(),
                error_code=error_code,
                error_message=error_message,
                next_attempt_at=next_attempt_at,
            ),
        )

    def mark_failed(self, claim: Claim, *, error_code: str, error_message: str) -> bool:
        """Record a final failure; False (and nothing written) if the claim is no longer current."""
        failure = transitions.failed(
            claim, now=self._clock(), error_code=error_code, error_message=error_message
        )
        return self._finish_attempt(claim, failure)

    def hand_back(self, claim: Claim, *, reason: str) -> Job | None:
        """Give a running attempt back to the queue unfinished (its worker is shutting down):
        the job waits again without having spent the attempt. Returns the queued job, or None
        if the claim is no longer current (the attempt finished or was taken away)."""
        with self._transaction() as transaction:
            handing_back = transitions.handed_back(claim, now=self._clock(), reason=reason)
            if not transaction.apply(claim.job.id, selections.current_attempt(claim), handing_back):
                return None
            return transaction.load(claim.job.id)

    def extend_lease(self, claim: Claim, lease_s: float) -> bool:
        """Heartbeat of a long attempt; False if the claim is no longer current."""
        with self._transaction() as transaction:
            heartbeat = transitions.lease_extended(now=self._clock(), lease_s=lease_s)
            return transaction.update(claim.job.id, selections.current_attempt(claim), heartbeat)

    def _finish_attempt(self, claim: Claim, outcome: Transition) -> bool:
        """Write the claimed attempt's `outcome`; False (and nothing written) if the claim is no
        longer current."""
        with self._transaction() as transaction:
            return transaction.apply(claim.job.id, selections.current_attempt(claim), outcome)

    # --- Delivery ---------------------------------------------------------------------------------

    def mark_enqueued(self, job_id: uuid.UUID) -> bool:
        """Record that a wake-up message was handed to the broker for a waiting job, or for a
        running job whose lease expired (the message that will reclaim it)."""
        with self._transaction() as transaction:
            now = self._clock()
            return transaction.update(job_id, selections.sendable(now), transitions.sent(now))

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
        with self._transaction() as transaction:
            return transaction.select(selection, _MOST_URGENT, limit)

    def waiting_after_send(
        self, *, sent_before: datetime, due_before: datetime, limit: int = 1000
    ) -> builtins.list[Job]:
        """Jobs still waiting for a worker although their message went out long ago: queued
        with the message sent before `sent_before`, or retrying and due before `due_before`."""
        selection = selections.waiting_after_send(sent_before=sent_before, due_before=due_before)
        with self._transaction() as transaction:
            return transaction.select(selection, _MOST_URGENT, limit)


def _jobs_to_requeue(
    transaction: Transaction, job_ids: builtins.list[uuid.UUID]
) -> builtins.list[Job]:
    jobs = []
    for job_id in dict.fromkeys(job_ids):  # each once, in the caller's order
        job = transaction.load(job_id)
        transitions.check_requeueable(job_id, job.status)
        jobs.append(job)
    return sorted(jobs, key=lambda job: job.created_at)
