"""The worker's side: claiming an attempt, keeping its lease, and recording its outcome, each
fenced by the claim so that a stale worker cannot overwrite another's outcome."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import ColumnElement

from toonq.shared.db.schema import JobRow
from toonq.shared.job import WAITING_STATUSES, Claim, Job
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.sql.base import SqlStoreBase, attempt_guard, load, snapshot, where


class SqlAttempts(SqlStoreBase):
    """Claims attempts and records their outcomes."""

    def claim(self, job_id: uuid.UUID, *, worker: str, lease_s: float) -> Claim | None:
        """Start the next attempt of a job, or return None if it is not claimable: finished,
        cancelled, or running under a live lease (a duplicate message).

        A running job whose lease expired lost its worker: it is reclaimed, unless it already
        used all its attempts, in which case it fails with `worker_lost`.
        """
        with self._transaction() as session:
            now = self._clock()
            job = snapshot(Job, load(session, job_id))
            guard: builtins.list[ColumnElement[bool]] = [
                JobRow.status == job.status,
                JobRow.attempts == job.attempts,
            ]
            lease_lost = selections.lease_lost(now)
            lost = lease_lost.matches(job)
            if lost:
                guard.append(where(lease_lost))
                if job.attempts >= job.max_attempts:
                    failure = transitions.worker_lost(job, worker=worker, now=now)
                    self._apply(session, job_id, failure, *guard)
                    return None
            elif job.status not in WAITING_STATUSES:
                return None
            attempt = job.attempts + 1
            start = transitions.started(attempt, worker=worker, now=now, lease_s=lease_s)
            # Not `_apply`: a reclaim records its own event first.
            if not self._cas(session, job_id, *guard, **start.values):
                return None  # another worker won the race
            if lost:
                self._record(session, job_id, transitions.reclaimed(job, worker=worker, now=now))
            self._record(session, job_id, start)
            return Claim(snapshot(Job, load(session, job_id)), attempt)

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
        with self._transaction() as session:
            success = transitions.succeeded(
                claim,
                now=self._clock(),
                model_name=model_name,
                model_revision=model_revision,
                image_width=image_width,
                image_height=image_height,
                timings=timings,
            )
            return self._apply(session, claim.job.id, success, *attempt_guard(claim))

    def mark_retrying(
        self, claim: Claim, *, error_code: str, error_message: str, next_attempt_at: datetime
    ) -> bool:
        """Schedule another attempt at `next_attempt_at`; False if the claim is no longer
        current. Sending the delayed message is the caller's job (then `mark_enqueued`)."""
        with self._transaction() as session:
            retry = transitions.retried(
                claim,
                now=self._clock(),
                error_code=error_code,
                error_message=error_message,
                next_attempt_at=next_attempt_at,
            )
            return self._apply(session, claim.job.id, retry, *attempt_guard(claim))

    def mark_failed(self, claim: Claim, *, error_code: str, error_message: str) -> bool:
        """Record a final failure; False (and nothing written) if the claim is no longer current."""
        with self._transaction() as session:
            failure = transitions.failed(
                claim, now=self._clock(), error_code=error_code, error_message=error_message
            )
            return self._apply(session, claim.job.id, failure, *attempt_guard(claim))

    def hand_back(self, claim: Claim, *, reason: str) -> Job | None:
        """Give a running attempt back to the queue unfinished (its worker is shutting down):
        the job waits again without having spent the attempt. Returns the queued job, or None
        if the claim is no longer current (the attempt finished or was taken away)."""
        with self._transaction() as session:
            handing_back = transitions.handed_back(claim, now=self._clock(), reason=reason)
            if not self._apply(session, claim.job.id, handing_back, *attempt_guard(claim)):
                return None
            return snapshot(Job, load(session, claim.job.id))

    def extend_lease(self, claim: Claim, lease_s: float) -> bool:
        """Heartbeat of a long attempt; False if the claim is no longer current."""
        with self._transaction() as session:
            return self._cas(
                session,
                claim.job.id,
                *attempt_guard(claim),
                **transitions.lease_extended(now=self._clock(), lease_s=lease_s),
            )
