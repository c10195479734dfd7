"""The operators' changes: cancelling jobs and sending finished ones back to the queue."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from toonq.shared.db.schema import JobRow
from toonq.shared.errors import InvalidRequestError, InvalidTransitionError
from toonq.shared.job import (
    CANCELLABLE_STATUSES,
    REQUEUEABLE_STATUSES,
    EventKind,
    Job,
    JobStatus,
    aware,
    parse_status,
)
from toonq.shared.jobstore.sql.base import SqlStoreBase, load, snapshot


class SqlAdministration(SqlStoreBase):
    """Cancels and requeues jobs."""

    def cancel(self, job_id: uuid.UUID, *, actor: str, reason: str | None = None) -> Job:
        """Cancel a queued, retrying or running job. A running job's worker finds out when it
        tries to record its outcome (which is then discarded)."""
        with self._transaction() as session:
            now = self._clock()
            cancelled = self._transition(
                session,
                job_id,
                EventKind.CANCELLED,
                JobRow.status.in_(CANCELLABLE_STATUSES),
                actor=actor,
                at=now,
                reason=reason,
                finished_at=now,
                next_attempt_at=None,
                lease_expires_at=None,
                enqueued_at=None,
            )
            if not cancelled:
                job = snapshot(Job, load(session, job_id))
                raise InvalidTransitionError(
                    f"job {job_id} is {job.status}: only queued, retrying or running jobs "
                    "can be cancelled"
                )
            return snapshot(Job, load(session, job_id))

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
        with self._transaction() as session:
            if job_ids is not None:
                rows = _rows_to_requeue(session, builtins.list(job_ids))
            else:
                rows = _rows_matching(
                    session, parse_status(status), error_code, aware(since, "since")
                )
            if dry_run:
                return [snapshot(Job, row) for row in rows]
            now = self._clock()
            requeued = []
            for row in rows:
                previous = snapshot(Job, row)
                if not self._requeue_one(session, previous, actor=actor, at=now, reason=reason):
                    if job_ids is None:
                        continue  # changed under us (e.g. requeued by another operator)
                    raise InvalidTransitionError(f"job {previous.id} changed while requeueing")
                requeued.append(snapshot(Job, load(session, previous.id)))
            return requeued

    def _requeue_one(
        self, session: Session, job: Job, *, actor: str, at: datetime, reason: str | None
    ) -> bool:
        return self._transition(
            session,
            job.id,
            EventKind.REQUEUED,
            JobRow.status == job.status,
            actor=actor,
            at=at,
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


def _rows_to_requeue(session: Session, job_ids: builtins.list[uuid.UUID]) -> builtins.list[JobRow]:
    rows = []
    for job_id in dict.fromkeys(job_ids):  # each once, in the caller's order
        row = load(session, job_id)
        if row.status not in REQUEUEABLE_STATUSES:
            raise InvalidTransitionError(
                f"job {job_id} is {row.status}: only failed or cancelled jobs can be requeued"
            )
        rows.append(row)
    return sorted(rows, key=lambda row: row.created_at)


def _rows_matching(
    session: Session, status: JobStatus, error_code: str | None, since: datetime | None
) -> builtins.list[JobRow]:
    if status not in REQUEUEABLE_STATUSES:
        raise InvalidRequestError(f"only failed or cancelled jobs can be requeued, not {status}")
    query = select(JobRow).where(JobRow.status == status).order_by(JobRow.created_at)
    if error_code is not None:
        query = query.where(JobRow.error_code == error_code)
    if since is not None:
        query = query.where(JobRow.created_at >= since)
    return builtins.list(session.scalars(query))
