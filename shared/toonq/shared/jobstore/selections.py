"""Which jobs a wake-up message is for, for every job store: those recovery must send one again,
those still waiting after theirs was sent, and those a sent one may be recorded for.

Each is a `Selection`: data that the SQL store turns into a WHERE clause and the in-memory store
checks on a snapshot (`Selection.matches`), so the two select the same jobs by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from toonq.shared.job import WAITING_STATUSES, Job, JobStatus


@dataclass(frozen=True, kw_only=True)
class Clause:
    """Jobs in `status` whose message was sent, or not, as `sent` says (either way when None),
    and whose fields named in `before` hold instants before the ones given there. As in SQL, an
    empty field is before nothing."""

    status: JobStatus
    sent: bool | None = None
    before: Mapping[str, datetime] = field(default_factory=dict)

    def matches(self, job: Job) -> bool:
        if job.status is not self.status:
            return False
        if self.sent is not None and (job.enqueued_at is not None) is not self.sent:
            return False
        return all(_before(getattr(job, name), limit) for name, limit in self.before.items())


@dataclass(frozen=True)
class Selection:
    """The jobs that match any of its clauses."""

    clauses: tuple[Clause, ...]

    def matches(self, job: Job) -> bool:
        return any(clause.matches(job) for clause in self.clauses)


def lease_lost(now: datetime) -> Selection:
    """Running jobs whose worker stopped renewing the lease."""
    return Selection((Clause(status=JobStatus.RUNNING, before={"lease_expires_at": now}),))


def sendable(now: datetime) -> Selection:
    """Jobs a sent wake-up message may be recorded for: waiting ones, and running ones whose
    lease was lost (the message that will reclaim them)."""
    waiting = tuple(Clause(status=status) for status in sorted(WAITING_STATUSES))
    return Selection(waiting + lease_lost(now).clauses)


def due_for_recovery(now: datetime, *, unsent_grace_s: float, lost_after_s: float) -> Selection:
    """Jobs that need a new wake-up message:

    * waiting jobs whose message was never sent (the sender died, or the broker was down,
      between commit and send), once `unsent_grace_s` passed since they became due;
    * waiting jobs due for longer than `lost_after_s` (their message is presumed lost);
    * running jobs whose lease expired (their worker is presumed lost; the claim of the new
      message reclaims the job or fails it with `worker_lost`), unless a message for that was
      sent less than `lost_after_s` ago.
    """
    unsent_before = now - timedelta(seconds=unsent_grace_s)
    lost_before = now - timedelta(seconds=lost_after_s)
    queued, retrying, running = JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.RUNNING
    return Selection(
        (
            Clause(status=queued, sent=False, before={"updated_at": unsent_before}),
            Clause(status=retrying, sent=False, before={"next_attempt_at": unsent_before}),
            Clause(status=queued, before={"enqueued_at": lost_before}),
            Clause(
                status=retrying,
                before={"enqueued_at": lost_before, "next_attempt_at": lost_before},
            ),
            Clause(status=running, sent=False, before={"lease_expires_at": now}),
            Clause(status=running, before={"lease_expires_at": now, "enqueued_at": lost_before}),
        )
    )


def waiting_after_send(*, sent_before: datetime, due_before: datetime) -> Selection:
    """Jobs still waiting for a worker although their message went out long ago: queued with
    the message sent before `sent_before`, or retrying and due before `due_before`."""
    return Selection(
        (
            Clause(status=JobStatus.QUEUED, before={"enqueued_at": sent_before}),
            Clause(status=JobStatus.RETRYING, sent=True, before={"next_attempt_at": due_before}),
        )
    )


def _before(value: datetime | None, limit: datetime) -> bool:
    return value is not None and value < limit
