"""Reading jobs and their history."""

from __future__ import annotations

import builtins
import uuid
from datetime import datetime

from sqlalchemy import select

from toonq.shared.db.schema import JobEventRow, JobRow
from toonq.shared.job import Job, JobEvent, JobStatus, aware, parse_status
from toonq.shared.jobstore.sql.base import SqlStoreBase, load, snapshot


class SqlReads(SqlStoreBase):
    """Reads jobs and their events."""

    def get(self, job_id: uuid.UUID) -> Job:
        with self._transaction() as session:
            return snapshot(Job, load(session, job_id))

    def list(
        self,
        status: JobStatus | str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally filtered by status, error code and creation time."""
        query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit)
        if status is not None:
            query = query.where(JobRow.status == parse_status(status))
        if error_code is not None:
            query = query.where(JobRow.error_code == error_code)
        if aware(since, "since") is not None:
            query = query.where(JobRow.created_at >= since)
        with self._transaction() as session:
            return [snapshot(Job, row) for row in session.scalars(query)]

    def events(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""
        with self._transaction() as session:
            load(session, job_id)
            rows = session.scalars(
                select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)
            )
            return [snapshot(JobEvent, row) for row in rows]
