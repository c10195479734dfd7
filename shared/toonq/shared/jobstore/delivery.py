"""Bookkeeping of wake-up messages: when a job's was sent, and which jobs recovery must send
again (see `toonq.shared.recovery`)."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable, Mapping
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
        return job_id in self.mark_all_enqueued([job_id])

    def mark_all_enqueued(self, job_ids: Iterable[uuid.UUID]) -> builtins.set[uuid.UUID]:
        """`mark_enqueued` for many jobs in one statement; the ids of those it applied to."""
        job_ids = frozenset(job_ids)
        if not job_ids:
            return set()
        with self._transaction(single_write=True) as transaction:
            now = self._clock()
            guard = selections.among_ids(selections.sendable(now), job_ids)
            return transaction.update_all(guard, transitions.sent(now))

    def due_for_recovery(
        self,
        *,
        unsent_grace_s: float,
        lost_after_s: float,
        reclaim_lost_after_s: float | None = None,
        hold_tenants: bool = False,
        now: datetime | None = None,
        limit: int = 1000,
    ) -> builtins.list[Job]:
        """Jobs that need a new wake-up message (`selections.due_for_recovery`), most urgent
        first. A reclaim message is presumed lost after `reclaim_lost_after_s` (by default
        `lost_after_s`). With `hold_tenants`, the tenants' held jobs are left to `releasable`."""
        now = aware(now, "now") or self._clock()
        if reclaim_lost_after_s is None:
            reclaim_lost_after_s = lost_after_s
        selection = selections.due_for_recovery(
            now,
            unsent_grace_s=unsent_grace_s,
            lost_after_s=lost_after_s,
            reclaim_lost_after_s=reclaim_lost_after_s,
            hold_tenants=hold_tenants,
        )
        with self._transaction() as transaction:
            return transaction.select(selection, _MOST_URGENT, limit)

    def held_tenants(self) -> builtins.list[str]:
        """The tenants with queued jobs whose message is not sent, by name."""
        with self._transaction() as transaction:
            return transaction.tenants(selections.held())

    def releasable(
        self, tenant: str, *, queue_slots: int, max_in_flight: int = 0
    ) -> builtins.list[Job]:
        """`tenant`'s held jobs that may be sent now, most urgent first: as many as leave at most
        `queue_slots` of its jobs sent and not yet claimed and, with a `max_in_flight` (0: no
        cap), at most that many of its jobs sent or running. Two releasers counting at once
        may each send one job more."""
        with self._transaction() as transaction:
            sent = len(transaction.select(selections.sent_unclaimed(tenant), (), queue_slots))
            free = queue_slots - sent
            if max_in_flight > 0 and free > 0:
                running = transaction.select(selections.running_of(tenant), (), max_in_flight)
                free = min(free, max_in_flight - sent - len(running))
            if free <= 0:
                return []
            return transaction.select(selections.held(tenant), _MOST_URGENT, free)

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
