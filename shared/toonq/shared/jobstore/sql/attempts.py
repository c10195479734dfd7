"""The worker's side: claiming an attempt, keeping its lease, and recording its outcome, each
fenced by the claim so that a stale worker cannot overwrite another's outcome."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from toonq.shared.db.schema import JobRow
from toonq.shared.errors import WorkerLostError
from toonq.shared.job import WAITING_STATUSES, Claim, EventKind, Job, JobStatus, iso_utc
from toonq.shared.jobstore.sql.base import SqlStoreBase, attempt_guard, load, snapshot


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
            lost = job.status is JobStatus.RUNNING and _lease_expired(job, now)
            if lost:
                guard.append(JobRow.lease_expires_at < now)
                if job.attempts >= job.max_attempts:
                    self._fail_lost(session, job, guard, worker=worker, now=now)
                    return None
            elif job.status not in WAITING_STATUSES:
                return None
            attempt = job.attempts + 1
            # Not a `_transition`: a reclaim records its own event first.
            claimed = self._cas(
                session,
                job_id,
                *guard,
                status=EventKind.STARTED.status,
                attempts=attempt,
                worker=worker,
                started_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s),
                next_attempt_at=None,
                enqueued_at=None,
                updated_at=now,
            )
            if not claimed:
                return None  # another worker won the race
            if lost:
                self._event(
                    session,
                    job_id,
                    EventKind.RECLAIMED,
                    actor=worker,
                    at=now,
                    reason="the previous worker's lease expired",
                    details={"lost_worker": job.worker, "lost_attempt": job.attempts},
                )
            self._event(
                session,
                job_id,
                EventKind.STARTED,
                actor=worker,
                at=now,
                details={"attempt": attempt},
            )
            return Claim(snapshot(Job, load(session, job_id)), attempt)

    def _fail_lost(
        self,
        session: Session,
        job: Job,
        guard: builtins.list[ColumnElement[bool]],
        *,
        worker: str,
        now: datetime,
    ) -> None:
        message = (
            f"worker {job.worker} stopped renewing its lease on attempt {job.attempts} "
            f"of {job.max_attempts}"
        )
        code = WorkerLostError.code
        self._transition(
            session,
            job.id,
            EventKind.FAILED,
            *guard,
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
        with self._transaction() as session:
            now = self._clock()
            return self._transition(
                session,
                claim.job.id,
                EventKind.SUCCEEDED,
                *attempt_guard(claim),
                actor=claim.worker,
                at=now,
                details={"attempt": claim.attempt},
                model_name=model_name,
                model_revision=model_revision,
                image_width=image_width,
                image_height=image_height,
                timings=dict(timings),
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
        with self._transaction() as session:
            return self._transition(
                session,
                claim.job.id,
                EventKind.RETRIED,
                *attempt_guard(claim),
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
        with self._transaction() as session:
            now = self._clock()
            return self._transition(
                session,
                claim.job.id,
                EventKind.FAILED,
                *attempt_guard(claim),
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
        with self._transaction() as session:
            if not self._transition(
                session,
                claim.job.id,
                EventKind.HANDED_BACK,
                *attempt_guard(claim),
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
            return snapshot(Job, load(session, claim.job.id))

    def extend_lease(self, claim: Claim, lease_s: float) -> bool:
        """Heartbeat of a long attempt; False if the claim is no longer current."""
        with self._transaction() as session:
            now = self._clock()
            return self._cas(
                session,
                claim.job.id,
                *attempt_guard(claim),
                lease_expires_at=now + timedelta(seconds=lease_s),
                updated_at=now,
            )


def _lease_expired(job: Job, now: datetime) -> bool:
    return job.lease_expires_at is not None and job.lease_expires_at < now
