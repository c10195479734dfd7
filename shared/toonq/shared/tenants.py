"""Tenants, served in turn: a tenant's backlog waits in the database, not in the broker.

A job may belong to a tenant. Where `TOONQ_TENANT_QUEUE_SLOTS` is above 0, a tenant's queued
jobs are *held* (in the database, their message not sent) until the tenant has fewer than that
many jobs sent to the broker and not yet claimed; then its most urgent held jobs are *released*
(sent). Each claim of a tenant's job releases the next, and each finish too where
`TOONQ_TENANT_MAX_IN_FLIGHT` caps the tenant's jobs sent or running. So the broker's lists hold
at most a few jobs of each tenant, and a job of another tenant waits behind about one batch of a
tenant's backlog, not the whole of it. Jobs of no tenant are sent at once, as ever.

A held job is never lost: every recovery pass releases the held jobs of every tenant up to its
limits, in case a release was lost with the process that was to send it.
"""

from __future__ import annotations

from dataclasses import dataclass

from toonq.shared.settings import Settings


@dataclass(frozen=True)
class TenantLimits:
    """How many of a tenant's jobs may be sent and not yet claimed (`queue_slots`; 0: every job
    is sent at once and none is held) and, with `max_in_flight` above 0, sent or running."""

    queue_slots: int = 0
    max_in_flight: int = 0

    @classmethod
    def of(cls, settings: Settings) -> TenantLimits:
        return cls(settings.tenant_queue_slots, settings.tenant_max_in_flight)

    @property
    def holding(self) -> bool:
        """Whether tenants' jobs wait for their turn rather than being sent at once."""
        return self.queue_slots > 0


#: Every job sent at once, none held: a sender's limits unless given.
NO_LIMITS = TenantLimits()
