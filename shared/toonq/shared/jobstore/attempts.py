"""The worker's side: claiming an attempt, keeping its lease, committing its output and
recording its outcome, each fenced by the claim so that a stale worker cannot overwrite another's
outcome."""

from __future__ import annotations

import builtins
import uuid
from datetime import datetime, timedelta
from typing import overload

from toonq.shared.job import WAITING_STATUSES, Claim, Job, JobStatus, NotDue, StagedOutput
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.core import StoreCore
from toonq.shared.jobstore.transitions import Transition


class Attempts(StoreCore):
    """Claims attempts and records their outcomes."""

    @overload
    def claim(
        self, job_id: uuid.UUID, *, worker: str, lease_s: float, early_tolerance_s: None = None
    ) -> Claim | None: ...

    @overload
    def claim(
        self, job_id: uuid.UUID, *, worker: str, lease_s: float, early_tolerance_s: float
    ) -> Claim | NotDue | None: ...

    def claim(
        self,
        job_id: uuid.UUID,
        *,
        worker: str,
        lease_s: float,
        early_tolerance_s: float | None = None,
    ) -> Claim | NotDue | None:
        """Start the next attempt of a job, or return None if it is not claimable: finished,
        cancelled, or running under a live lease (a duplicate message).

        A running job whose lease expired lost its worker: it is reclaimed, unless it already
        used all its attempts, in which case it fails with `worker_lost`; a job with a
        committed output is reclaimed whatever its attempts, since publishing it runs nothing
        that could have killed the worker. Given
        `early_tolerance_s`, a retry due later than that from now is left waiting (`NotDue`).
        One read and one guarded write, whose result is the claimed job. In a transaction
        although it writes once: a worker that dies while its claim waits (say on a row lock)
        must leave the job unclaimed, not started by nobody. A store that can claim a waiting
        job in one statement that never waits for a lock does that first
        (`Transaction.claim_if_waiting`).
        """
        if self._claims_in_one_statement:
            with self._transaction(single_write=True) as transaction:
                now = self._clock()
                due_by = None
                if early_tolerance_s is not None:
                    due_by = now + timedelta(seconds=early_tolerance_s)
                # The statement counts the attempt up from the row's: 0 stands for it here.
                start = transitions.started(0, worker=worker, now=now, lease_s=lease_s)
                one_statement = transaction.claim_if_waiting(job_id, due_by=due_by, start=start)
            if one_statement is not None:
                return one_statement
        with self._transaction() as transaction:
            now = self._clock()
            job = transaction.load(job_id)
            if early_tolerance_s is not None and _due_later(job, now, early_tolerance_s):
                return NotDue(job)
            steps: builtins.list[Transition] = []
            if selections.lease_lost(now).matches(job):
                guard = selections.as_read(job, lease_lost_at=now)
                if job.attempts >= job.max_attempts and job.staged_output_uri is None:
                    failure = transitions.worker_lost(job, worker=worker, now=now)
                    transaction.apply_matched(job_id, guard, failure)
                    return None
                steps.append(transitions.reclaimed(job, worker=worker, now=now))
            elif job.status in WAITING_STATUSES:
                guard = selections.as_read(job)
            else:
                return None
            attempt = job.attempts + 1
            steps.append(transitions.started(attempt, worker=worker, now=now, lease_s=lease_s))
            claimed = transaction.apply(job_id, guard, *steps)
            if claimed is None:
                return None  # another worker won the race
            waited_since = job.next_attempt_at or job.sent_at or job.updated_at
            return Claim(claimed, attempt, waited_since=waited_since)

    def commit_output(self, claim: Claim, staged: StagedOutput) -> bool:
        """Commit `staged` as the job's output, the job still running until it is published
        (`mark_succeeded`); False (and nothing written) if the claim is no longer current or
        an output was already committed. Once committed, the job publishes this output and no
        other, whichever attempt publishes it."""
        with self._transaction(single_write=True) as transaction:
            committing = transitions.committed(staged, now=self._clock())
            guard = selections.uncommitted(claim)
            return transaction.update_matched(claim.job.id, guard, committing)

    def drop_output(self, claim: Claim, staged: StagedOutput) -> bool:
        """Forget the committed `staged` output, whose object is gone (it expired before it was
        published), so that the claimed attempt may commit its own; False (and nothing written)
        if the claim is no longer current or `staged` is not the job's committed output."""
        with self._transaction(single_write=True) as transaction:
            dropping = transitions.output_dropped(now=self._clock())
            guard = selections.committed_to(claim, staged.uri)
            return transaction.update_matched(claim.job.id, guard, dropping)

    def mark_succeeded(self, claim: Claim, staged: StagedOutput) -> bool:
        """Record success, once the committed `staged` output was copied to the job's output
        URI; False (and nothing written) if the claim is no longer current or `staged` is not
        the job's committed output."""
        with self._transaction(single_write=True) as transaction:
            success = transitions.succeeded(claim, staged, now=self._clock())
            guard = selections.committed_to(claim, staged.uri)
            return transaction.apply_matched(claim.job.id, guard, success)

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
        with self._transaction(single_write=True) as transaction:
            handing_back = transitions.handed_back(claim, now=self._clock(), reason=reason)
            return transaction.apply(claim.job.id, selections.current_attempt(claim), handing_back)

    def extend_lease(self, claim: Claim, lease_s: float) -> bool:
        """Heartbeat of a long attempt; False if the claim is no longer current."""
        with self._transaction(single_write=True) as transaction:
            heartbeat = transitions.lease_extended(now=self._clock(), lease_s=lease_s)
            current = selections.current_attempt(claim)
            return transaction.update_matched(claim.job.id, current, heartbeat)

    def _finish_attempt(self, claim: Claim, outcome: Transition) -> bool:
        """Write the claimed attempt's `outcome`; False (and nothing written) if the claim is no
        longer current."""
        with self._transaction(single_write=True) as transaction:
            current = selections.current_attempt(claim)
            return transaction.apply_matched(claim.job.id, current, outcome)


def _due_later(job: Job, now: datetime, tolerance_s: float) -> bool:
    """Whether `job` is a retry due more than `tolerance_s` after `now`."""
    due = job.next_attempt_at
    return (
        job.status == JobStatus.RETRYING
        and due is not None
        and (due - now).total_seconds() > tolerance_s
    )
