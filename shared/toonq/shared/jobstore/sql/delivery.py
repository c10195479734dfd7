"""Bookkeeping of wake-up messages: when a job's was sent, and which jobs recovery must send
again (see `toonq.shared.recovery`)."""

from __future__ import annotations

import builtins
import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select

from toonq.shared.db.schema import JobRow
from toonq.shared.job import WAITING_STATUSES, Job, JobStatus, aware
from toonq.shared.jobstore.sql.base import SqlStoreBase, snapshot


class SqlDelivery(SqlStoreBase):
    """Records sends and finds the jobs recovery must send again."""

    def mark_enqueued(self, job_id: uuid.UUID) -> bool:
        """Record that a wake-up message was handed to the broker for a waiting job, or for a
        running job whose lease expired (the message that will reclaim it)."""
        with self._transaction() as session:
            now = self._clock()
            return self._cas(
                session,
                job_id,
                or_(
                    JobRow.status.in_(WAITING_STATUSES),
                    and_(JobRow.status == JobStatus.RUNNING, JobRow.lease_expires_at < now),
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
        """Jobs that need a new wake-up message, most urgent first:

        * waiting jobs whose message was never sent (the sender died, or the broker was down,
          between commit and send), once `unsent_grace_s` passed since they became due;
        * waiting jobs due for longer than `lost_after_s` (their message is presumed lost);
        * running jobs whose lease expired (their worker is presumed lost; the claim of the new
          message reclaims the job or fails it with `worker_lost`), unless a message for that
          was sent less than `lost_after_s` ago.
        """
        now = aware(now, "now") or self._clock()
        unsent_before = now - timedelta(seconds=unsent_grace_s)
        lost_before = now - timedelta(seconds=lost_after_s)
        queued = JobRow.status == JobStatus.QUEUED
        retrying = JobRow.status == JobStatus.RETRYING
        unsent = JobRow.enqueued_at.is_(None)
        query = (
            select(JobRow)
            .where(
                or_(
                    and_(queued, unsent, JobRow.updated_at < unsent_before),
                    and_(retrying, unsent, JobRow.next_attempt_at < unsent_before),
                    and_(queued, JobRow.enqueued_at < lost_before),
                    and_(
                        retrying,
                        JobRow.enqueued_at < lost_before,
                        JobRow.next_attempt_at < lost_before,
                    ),
                    and_(
                        JobRow.status == JobStatus.RUNNING,
                        JobRow.lease_expires_at < now,
                        or_(JobRow.enqueued_at.is_(None), JobRow.enqueued_at < lost_before),
                    ),
                )
            )
            .order_by(JobRow.priority.desc(), JobRow.created_at)
            .limit(limit)
        )
        with self._transaction() as session:
            return [snapshot(Job, row) for row in session.scalars(query)]

    def waiting_after_send(
        self, *, sent_before: datetime, due_before: datetime, limit: int = 1000
    ) -> builtins.list[Job]:
        """Jobs still waiting for a worker although their message went out long ago: queued
        with the message sent before `sent_before`, or retrying and due before `due_before`."""
        query = (
            select(JobRow)
            .where(
                or_(
                    and_(JobRow.status == JobStatus.QUEUED, JobRow.enqueued_at < sent_before),
                    and_(
                        JobRow.status == JobStatus.RETRYING,
                        JobRow.enqueued_at.is_not(None),
                        JobRow.next_attempt_at < due_before,
                    ),
                )
            )
            .order_by(JobRow.priority.desc(), JobRow.created_at)
            .limit(limit)
        )
        with self._transaction() as session:
            return [snapshot(Job, row) for row in session.scalars(query)]
