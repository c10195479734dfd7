"""The operators' changes: cancelling jobs and sending finished ones back to the queue."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from toonq.shared.db.schema import JobRow
from toonq.shared.errors import InvalidTransitionError
from toonq.shared.job import CANCELLABLE_STATUSES, Job, JobStatus, aware
from toonq.shared.jobstore import transitions
from toonq.shared.jobstore.sql.base import SqlStoreBase, load, snapshot


class SqlAdministration(SqlStoreBase):
    """Cancels and requeues jobs."""

    def cancel(self, job_id: uuid.UUID, *, actor: str, reason: str | None = None) -> Job:
        """Cancel a queued, retrying or running job. A running job's worker finds out when it
        tries to record its outcome (which is then discarded)."""
        with self._transaction() as session:
            cancellation = transitions.cancelled(actor=actor, now=self._clock(), reason=reason)
            cancelled = self._apply(
                session, job_id, cancellation, JobRow.status.in_(CANCELLABLE_STATUSES)
            )
            job = snapshot(Job, load(session, job_id))
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
        with self._transaction() as session:
            if job_ids is not None:
                rows = _rows_to_requeue(session, builtins.list(job_ids))
            else:
                rows = _rows_matching(
                    session, transitions.requeue_filter(status), error_code, aware(since, "since")
                )
            if dry_run:
                return [snapshot(Job, row) for row in rows]
            now = self._clock()
            requeued = []
            for row in rows:
                previous = snapshot(Job, row)
                requeue = transitions.requeued(previous, actor=actor, now=now, reason=reason)
                if not self._apply(session, previous.id, requeue, JobRow.status == previous.status):
                    if job_ids is None:
                        continue  # changed under us (e.g. requeued by another operator)
                    raise InvalidTransitionError(f"job {previous.id} changed while requeueing")
                requeued.append(snapshot(Job, load(session, previous.id)))
            return requeued


def _rows_to_requeue(session: Session, job_ids: builtins.list[uuid.UUID]) -> builtins.list[JobRow]:
    rows = []
    for job_id in dict.fromkeys(job_ids):  # each once, in the caller's order
        row = load(session, job_id)
        transitions.check_requeueable(job_id, row.status)
        rows.append(row)
    return sorted(rows, key=lambda row: row.created_at)


def _rows_matching(
    session: Session, status: JobStatus, error_code: str | None, since: datetime | None
) -> builtins.list[JobRow]:
    query = select(JobRow).where(JobRow.status == status).order_by(JobRow.created_at)
    if error_code is not None:
        query = query.where(JobRow.error_code == error_code)
    if since is not None:
        query = query.where(JobRow.created_at >= since)
    return builtins.list(session.scalars(query))
