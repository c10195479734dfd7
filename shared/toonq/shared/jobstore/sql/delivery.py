"""Bookkeeping of wake-up messages: when a job's was sent, and which jobs recovery must send
again (see `toonq.shared.recovery`)."""

from __future__ import annotations

import builtins
import uuid
from datetime import datetime

from sqlalchemy import select

from toonq.shared.db.schema import JobRow
from toonq.shared.job import Job, aware
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.selections import Selection
from toonq.shared.jobstore.sql.base import SqlStoreBase, snapshot, where


class SqlDelivery(SqlStoreBase):
    """Records sends and finds the jobs recovery must send again."""

    def mark_enqueued(self, job_id: uuid.UUID) -> bool:
        """Record that a wake-up message was handed to the broker for a waiting job, or for a
        running job whose lease expired (the message that will reclaim it)."""
        with self._transaction() as session:
            now = self._clock()
            return self._cas(
                session, job_id, where(selections.sendable(now)), **transitions.sent(now)
            )

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
        query = (
            select(JobRow)
            .where(where(selection))
            .order_by(JobRow.priority.desc(), JobRow.created_at)
            .limit(limit)
        )
        with self._transaction() as session:
            return [snapshot(Job, row) for row in session.scalars(query)]
