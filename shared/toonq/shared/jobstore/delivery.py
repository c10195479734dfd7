"""Bookkeeping of wake-up messages: when a job's was sent, and which jobs recovery must send
again (see `toonq.shared.recovery`)."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping
from datetime import datetime

from toonq.shared.job import Job, aware
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.core import StoreCore
from toonq.shared.jobstore.selections import Order

#: The most urgent first: what recovery sends first.
_MOST_URGENT: Order = ("-priority", "created_at")


class Delivery(StoreCore):
    """Records sends and finds the jobs recovery must send again."""

    def mark_enqueued(self, job_id: uuid.UUID) -> bool:
        """Record that a wake-up message was handed to the broker for a waiting job, or for a
        running job whose lease expired (the message that will reclaim it)."""
        with self._transaction(single_write=True) as transaction:
            now = self._clock()
            sent = transitions.sent(now)
            return transaction.update(job_id, selections.sendable(now), sent) is not None

    def due_for_recovery(
        self,
        *,
        unsent_grace_s: float,
        lost_after_s: float,
        reclaim_lost_after_s: float | None = None,
        now: datetime | None = None,
        limit: int = 1000,
    ) -> builtins.list[Job]:
        """Jobs that need a new wake-up message (`selections.due_for_recovery`), most urgent
        first. A reclaim message is presumed lost after `reclaim_lost_after_s` (by default
        `lost_after_s`)."""
        now = aware(now, "now") or self._clock()
        if reclaim_lost_after_s is None:
            reclaim_lost_after_s = lost_after_s
        selection = selections.due_for_recovery(
            now,
            unsent_grace_s=unsent_grace_s,
            lost_after_s=lost_after_s,
            reclaim_lost_after_s=reclaim_lost_after_s,
        )
        with self._transaction() as transaction:
            return transaction.select(selection, _MOST_URGENT, limit)

    def waiting_after_send(
        self,
        *,
        sent_before: Mapping[tuple[int, int], datetime],
        due_before: datetime,
        limit: int = 1000,
    ) -> builtins.list[Job]:
        """Jobs still waiting for a worker although their message went out long ago
        (`selections.waiting_after_send`: `sent_before` by band of priorities), most urgent
        first."""
        selection = selections.waiting_after_send(sent_before=sent_before, due_before=due_before)
        with self._transaction() as transaction:
            return transaction.select(selection, _MOST_URGENT, limit)
