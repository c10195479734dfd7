"""Which jobs a store reads or changes, for every job store: the filters of reads, the guards of
transitions, and the jobs a wake-up message is for (those recovery must send one again, those
still waiting after theirs was sent, and those a sent one may be recorded for).

Each is a `Selection`: data that the SQL store turns into a WHERE clause and the in-memory store
checks on a snapshot (`Selection.matches`), so the two select the same jobs by construction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from toonq.shared.job import (
    CANCELLABLE_STATUSES,
    FINISHED_STATUSES,
    WAITING_STATUSES,
    Claim,
    Job,
    JobStatus,
    WebhookState,
)


@dataclass(frozen=True, kw_only=True)
class Clause:
    """Jobs whose fields hold all of these: those named in `equal` the values given there, in
    `among` one of the values given there, in `before` instants before the ones given there, in
    `not_before` instants at or after them, in `within` values between the (lowest, highest)
    given there, both included, and in `empty` nothing (True) or something (False). As in SQL,
    an empty field is before, not before and within nothing."""

    equal: Mapping[str, Any] = field(default_factory=dict)
    among: Mapping[str, frozenset[Any]] = field(default_factory=dict)
    before: Mapping[str, datetime] = field(default_factory=dict)
    not_before: Mapping[str, datetime] = field(default_factory=dict)
    within: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    empty: Mapping[str, bool] = field(default_factory=dict)

    def matches(self, job: Job) -> bool:
        def value(name: str) -> Any:
            return getattr(job, name)

        return (
            all(value(name) == wanted for name, wanted in self.equal.items())
            and all(value(name) in wanted for name, wanted in self.among.items())
            and all(_before(value(name), limit) for name, limit in self.before.items())
            and all(_not_before(value(name), limit) for name, limit in self.not_before.items())
            and all(_within(value(name), *bounds) for name, bounds in self.within.items())
            and all((value(name) is None) is empty for name, empty in self.empty.items())
        )


@dataclass(frozen=True)
class Selection:
    """The jobs that match any of its clauses."""

    clauses: tuple[Clause, ...]

    def matches(self, job: Job) -> bool:
        return any(clause.matches(job) for clause in self.clauses)


#: An order of jobs: field names, each ascending, or descending when prefixed with "-".
Order = Sequence[str]


def _one(**conditions: Any) -> Selection:
    return Selection((Clause(**conditions),))


# --- Reads and the operators' changes -------------------------------------------------------------


def filtered(
    status: JobStatus | None = None,
    error_code: str | None = None,
    since: datetime | None = None,
    tenant: str | None = None,
) -> Selection:
    """Jobs in `status`, with `error_code`, created at or after `since`, of `tenant` (each when
    given)."""
    equal: dict[str, Any] = {}
    if status is not None:
        equal["status"] = status
    if error_code is not None:
        equal["error_code"] = error_code
    if tenant is not None:
        equal["tenant"] = tenant
    return _one(equal=equal, not_before={} if since is None else {"created_at": since})


def with_ids(job_ids: Iterable[uuid.UUID]) -> Selection:
    return _one(among={"id": frozenset(job_ids)})


def among_ids(selection: Selection, job_ids: Iterable[uuid.UUID]) -> Selection:
    """The jobs `selection` matches that have one of these ids."""
    ids = frozenset(job_ids)
    return Selection(tuple(replace(c, among={**c.among, "id": ids}) for c in selection.clauses))


def writing(output_uris: Iterable[str]) -> Selection:
    """Jobs that write one of `output_uris`, whatever their status."""
    return _one(among={"output_uri": frozenset(output_uris)})


def id_prefix(digits: str) -> Selection:
    """Jobs whose id's hex digits start with `digits` (lowercase, no dashes): the ids from
    `digits` followed by zeros to `digits` followed by f's, an index's range scan."""
    lowest, highest = (uuid.UUID(digits.ljust(32, filler)) for filler in "0f")
    return _one(within={"id": (lowest, highest)})


def finished_since(since: datetime) -> Selection:
    """Jobs that finished at or after `since`."""
    return _one(among={"status": FINISHED_STATUSES}, not_before={"finished_at": since})


def in_status(*statuses: JobStatus) -> Selection:
    return _one(among={"status": frozenset(statuses)})


def cancellable() -> Selection:
    return in_status(*CANCELLABLE_STATUSES)


# --- The worker's ---------------------------------------------------------------------------------


def as_read(job: Job, *, lease_lost_at: datetime | None = None) -> Selection:
    """`job` still in the status and at the attempt it was read with, with the committed output
    it was read with (and, given `lease_lost_at`, with its lease lost then): a concurrent claim
    or commit of it does not match."""
    before = {} if lease_lost_at is None else {"lease_expires_at": lease_lost_at}
    equal = {
        "status": job.status,
        "attempts": job.attempts,
        "staged_output_uri": job.staged_output_uri,
    }
    return _one(equal=equal, before=before)


def current_attempt(claim: Claim) -> Selection:
    """Whether the claimed attempt is still the job's current one. started_at is stamped anew by
    every claim: with attempts it fences off a stale worker even after a requeue reset the
    attempt count."""
    return _one(equal=_current(claim))


def uncommitted(claim: Claim) -> Selection:
    """The claimed attempt still current, and no attempt's output committed to the job yet: the
    guard of a commit, so that a job commits one output at most."""
    return _one(equal=_current(claim), empty={"staged_output_uri": True})


def committed_to(claim: Claim, staged_uri: str) -> Selection:
    """The claimed attempt still current, and `staged_uri` the job's committed output."""
    return _one(equal={**_current(claim), "staged_output_uri": staged_uri})


def _current(claim: Claim) -> dict[str, Any]:
    return {
        "status": JobStatus.RUNNING,
        "attempts": claim.attempt,
        "started_at": claim.job.started_at,
    }


def lease_lost(now: datetime) -> Selection:
    """Running jobs whose worker stopped renewing the lease."""
    return _one(equal={"status": JobStatus.RUNNING}, before={"lease_expires_at": now})


# --- Delivery -------------------------------------------------------------------------------------


def _clause(status: JobStatus, *, sent: bool | None = None, **before: datetime) -> Clause:
    """Jobs in `status` whose message was sent, or not, as `sent` says (either way when None),
    and whose fields named in `before` hold instants before the ones given."""
    empty = {} if sent is None else {"sent_at": not sent}
    return Clause(equal={"status": status}, empty=empty, before=before)


def sendable(now: datetime) -> Selection:
    """Jobs a sent wake-up message may be recorded for: waiting ones, and running ones whose
    lease was lost (the message that will reclaim them)."""
    waiting = tuple(_clause(status) for status in sorted(WAITING_STATUSES))
    return Selection(waiting + lease_lost(now).clauses)


def due_for_recovery(
    now: datetime,
    *,
    unsent_grace_s: float,
    lost_after_s: float,
    reclaim_lost_after_s: float,
    hold_tenants: bool = False,
) -> Selection:
    """Jobs that need a new wake-up message:

    * waiting jobs whose message was never sent (the sender died, or the broker was down,
      between commit and send), once `unsent_grace_s` passed since they became due; with
      `hold_tenants`, not the queued jobs of a tenant, which are held until their tenant's
      turn (`held`);
    * waiting jobs due for longer than `lost_after_s` (their message is presumed lost);
    * running jobs whose lease expired (their worker is presumed lost; the claim of the new
      message reclaims the job or fails it with `worker_lost`), unless a message for that was
      sent less than `reclaim_lost_after_s` ago.
    """
    unsent_before = now - timedelta(seconds=unsent_grace_s)
    lost_before = now - timedelta(seconds=lost_after_s)
    reclaim_lost_before = now - timedelta(seconds=reclaim_lost_after_s)
    queued, retrying, running = JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.RUNNING
    unsent_queued = _clause(queued, sent=False, updated_at=unsent_before)
    if hold_tenants:
        unsent_queued = replace(unsent_queued, empty={**unsent_queued.empty, "tenant": True})
    return Selection(
        (
            unsent_queued,
            _clause(retrying, sent=False, next_attempt_at=unsent_before),
            _clause(queued, sent_at=lost_before),
            _clause(retrying, sent_at=lost_before, next_attempt_at=lost_before),
            _clause(running, sent=False, lease_expires_at=now),
            _clause(running, lease_expires_at=now, sent_at=reclaim_lost_before),
        )
    )


def held(tenant: str | None = None) -> Selection:
    """Queued jobs of a tenant (of `tenant`, when given) whose message is not sent: where fair
    release is on, they wait for their tenant's turn (`toonq.shared.tenants`)."""
    equal: dict[str, Any] = {"status": JobStatus.QUEUED}
    if tenant is not None:
        equal["tenant"] = tenant
    return _one(equal=equal, empty={"sent_at": True, "tenant": False})


def sent_unclaimed(tenant: str) -> Selection:
    """`tenant`'s queued jobs whose message waits for a worker."""
    return _one(equal={"status": JobStatus.QUEUED, "tenant": tenant}, empty={"sent_at": False})


def running_of(tenant: str) -> Selection:
    return _one(equal={"status": JobStatus.RUNNING, "tenant": tenant})


def waiting_after_send(
    *, sent_before: Mapping[tuple[int, int], datetime], due_before: datetime
) -> Selection:
    """Jobs still waiting for a worker although their message went out long ago: queued, or
    running with a lease lost before `due_before` (the message is the one that reclaims them),
    with the message sent before the instant `sent_before` gives for the band of priorities
    (lowest, highest, both included) the job's lies in; or retrying and due before
    `due_before`. Priorities in no band given are not selected."""
    by_band = tuple(
        Clause(
            equal={"status": status},
            within={"priority": band},
            before={"sent_at": cutoff, **({"lease_expires_at": due_before} if lapsed else {})},
        )
        for band, cutoff in sent_before.items()
        for status, lapsed in ((JobStatus.QUEUED, False), (JobStatus.RUNNING, True))
    )
    return Selection((*by_band, _clause(JobStatus.RETRYING, sent=True, next_attempt_at=due_before)))


def _before(value: datetime | None, limit: datetime) -> bool:
    return value is not None and value < limit


def _not_before(value: datetime | None, limit: datetime) -> bool:
    return value is not None and value >= limit


def _within(value: Any, lowest: Any, highest: Any) -> bool:
    return value is not None and lowest <= value <= highest


# --- Webhooks -------------------------------------------------------------------------------------


def webhooks_due(now: datetime) -> Selection:
    """Jobs whose webhook is due: pending, with a callback URL, due before `now`."""
    return _one(
        equal={"webhook_state": WebhookState.PENDING},
        empty={"callback_url": False},
        before={"webhook_next_at": now},
    )


def webhook_as_read(job: Job) -> Selection:
    """`job` if its webhook is still as it was read (the guard of taking it)."""
    return _one(
        equal={
            "webhook_id": job.webhook_id,
            "webhook_state": WebhookState.PENDING,
            "webhook_next_at": job.webhook_next_at,
        }
    )


def webhook_pending(job: Job) -> Selection:
    """`job` if its webhook is still this one and pending (the guard of recording an
    attempt)."""
    return _one(equal={"webhook_id": job.webhook_id, "webhook_state": WebhookState.PENDING})


def webhooks_in(state: WebhookState) -> Selection:
    """Jobs with a callback URL whose webhook is in `state`."""
    return _one(equal={"webhook_state": state}, empty={"callback_url": False})
