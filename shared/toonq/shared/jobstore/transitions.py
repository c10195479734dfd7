"""What each transition of a job writes, for every job store: the event its history records and
the job's new field values.

A store applies a `Transition` under its own guard (the SQL store as a guarded UPDATE and an
event row, the in-memory store as a replaced snapshot and a `JobEvent`), so the stores agree on
what a transition writes by construction. The rules that refuse an operator's change are here
too, for the same reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from toonq.shared.errors import (
    AlreadyCancelledError,
    DuplicateJobIdError,
    InvalidRequestError,
    InvalidTransitionError,
    OutputConflictError,
    WorkerLostError,
)
from toonq.shared.job import (
    REQUEUEABLE_STATUSES,
    Claim,
    EventKind,
    Job,
    JobSpec,
    JobStatus,
    StagedOutput,
    WebhookState,
    iso_utc,
    parse_status,
)


@dataclass(frozen=True, kw_only=True)
class Transition:
    """One event of a job's history and the fields it changes. The job's status becomes the one
    the event's kind leads to, and its `updated_at` the event's time (if it leads to one)."""

    kind: EventKind
    at: datetime
    actor: str
    reason: str | None = None
    details: dict[str, Any] | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, Any]:
        """Every field of the job it writes. A kind that leads to no status (a webhook's) is
        no change of the job: its `updated_at` stays, and so does its webhook's body."""
        if self.kind.status is None:
            return dict(self.changes)
        return {"status": self.kind.status, "updated_at": self.at, **self.changes}

    @property
    def event(self) -> dict[str, Any]:
        """The fields of its event, but for the ids of the event and the job."""
        return {
            "at": self.at,
            "kind": self.kind,
            "actor": self.actor,
            "reason": self.reason,
            "details": self.details,
        }


# --- The producer's and the operators' ------------------------------------------------------------


def created(spec: JobSpec, *, actor: str, now: datetime) -> Transition:
    """A new job, waiting for its first attempt; the fields it does not name are empty."""
    return Transition(
        kind=EventKind.CREATED,
        at=now,
        actor=actor,
        changes={
            "id": spec.id,
            "idempotency_key": spec.idempotency_key,
            "input_uri": spec.input_uri,
            "output_uri": spec.output_uri,
            "params": spec.params,
            "priority": spec.priority,
            "tenant": spec.tenant,
            "attempts": 0,
            "max_attempts": spec.max_attempts,
            "callback_url": spec.callback_url,
            "webhook_attempts": 0,
            "created_at": now,
        },
    )


def cancelled(job: Job, *, actor: str, now: datetime, reason: str | None) -> Transition:
    return Transition(
        kind=EventKind.CANCELLED,
        at=now,
        actor=actor,
        reason=reason,
        changes={
            "finished_at": now,
            "next_attempt_at": None,
            "lease_expires_at": None,
            "sent_at": None,
            **_webhook_due(job, now),
        },
    )


def duplicate_id(job_id: uuid.UUID) -> DuplicateJobIdError:
    return DuplicateJobIdError(f"job {job_id} already exists")


def output_conflict(spec: JobSpec, holder: uuid.UUID) -> OutputConflictError:
    """`spec` asks for the output URI of the job `holder`."""
    return OutputConflictError(
        f"output URI {spec.output_uri!r} is already the output of job {holder}"
    )


def not_cancellable(job: Job) -> InvalidTransitionError:
    if job.status is JobStatus.CANCELLED:
        return AlreadyCancelledError(f"job {job.id} was already cancelled")
    return InvalidTransitionError(
        f"job {job.id} is {job.status}: only queued, retrying or running jobs can be cancelled"
    )


def requeued(job: Job, *, actor: str, now: datetime, reason: str | None) -> Transition:
    """`job` back in the queue with fresh attempts, its last outcome kept in the event."""
    return Transition(
        kind=EventKind.REQUEUED,
        at=now,
        actor=actor,
        reason=reason,
        details={"from": job.status.value, "error_code": job.error_code, "attempts": job.attempts},
        changes={
            "attempts": 0,
            "error_code": None,
            "error_message": None,
            "worker": None,
            "started_at": None,
            "finished_at": None,
            "next_attempt_at": None,
            "lease_expires_at": None,
            "sent_at": None,
            # The last outcome's webhook, if still undelivered, is superseded by the next's.
            **_NO_WEBHOOK,
        },
    )


def check_requeueable(job_id: uuid.UUID, status: JobStatus) -> None:
    """InvalidTransitionError unless a job in `status`, asked for by its id, may be requeued."""
    if status not in REQUEUEABLE_STATUSES:
        raise InvalidTransitionError(
            f"job {job_id} is {status}: only failed or cancelled jobs can be requeued"
        )


def requeue_filter(status: JobStatus | str) -> JobStatus:
    """The status whose jobs a requeue by filter selects; InvalidRequestError unless they may
    be requeued."""
    status = parse_status(status)
    if status not in REQUEUEABLE_STATUSES:
        raise InvalidRequestError(f"only failed or cancelled jobs can be requeued, not {status}")
    return status


# --- The worker's ---------------------------------------------------------------------------------


def lease_end(now: datetime, lease_s: float) -> datetime:
    return now + timedelta(seconds=lease_s)


def started(attempt: int, *, worker: str, now: datetime, lease_s: float) -> Transition:
    return Transition(
        kind=EventKind.STARTED,
        at=now,
        actor=worker,
        details={"attempt": attempt},
        changes={
            "attempts": attempt,
            "worker": worker,
            "started_at": now,
            "lease_expires_at": lease_end(now, lease_s),
            "next_attempt_at": None,
            "sent_at": None,
        },
    )


def reclaimed(job: Job, *, worker: str, now: datetime) -> Transition:
    """`worker` takes over `job`, whose lease was lost; its `started` follows."""
    return Transition(
        kind=EventKind.RECLAIMED,
        at=now,
        actor=worker,
        reason="the previous worker's lease expired",
        details={"lost_worker": job.worker, "lost_attempt": job.attempts},
    )


def worker_lost(job: Job, *, worker: str, now: datetime) -> Transition:
    """The failure `worker` finds of a job whose lease was lost on its last attempt."""
    message = (
        f"worker {job.worker} stopped renewing its lease on attempt {job.attempts} "
        f"of {job.max_attempts}"
    )
    return _failure(
        job,
        actor=worker,
        now=now,
        error_code=WorkerLostError.code,
        error_message=message,
        attempt=job.attempts,
        lost_worker=job.worker,
    )


def lease_extended(*, now: datetime, lease_s: float) -> dict[str, Any]:
    """The fields a heartbeat writes (no event)."""
    return {"lease_expires_at": lease_end(now, lease_s), "updated_at": now}


def committed(staged: StagedOutput, *, now: datetime) -> dict[str, Any]:
    """The fields that committing an attempt's staged output writes (no event: the job keeps
    running until the output is published)."""
    return {
        "staged_output_uri": staged.uri,
        "staged_result": staged.record(),
        "updated_at": now,
    }


def output_dropped(*, now: datetime) -> dict[str, Any]:
    """The fields that forgetting a committed output whose staged object is gone writes (no
    event): the job may commit another."""
    return {"staged_output_uri": None, "staged_result": None, "updated_at": now}


def succeeded(claim: Claim, staged: StagedOutput, *, now: datetime) -> Transition:
    """The job's committed output published at its output URI by `claim`'s attempt, which may
    be a later attempt than the one that staged it."""
    return Transition(
        kind=EventKind.SUCCEEDED,
        at=now,
        actor=claim.worker,
        details={
            "attempt": claim.attempt,
            "staged_attempt": staged.attempt,
            "staged_output_uri": staged.uri,
        },
        changes={
            "model_name": staged.model_name,
            "model_revision": staged.model_revision,
            "image_width": staged.image_width,
            "image_height": staged.image_height,
            "timings": dict(staged.timings),
            "output": staged.output(),
            "error_code": None,
            "error_message": None,
            "finished_at": now,
            "lease_expires_at": None,
            **_webhook_due(claim.job, now),
            # Published, and its staged object deleted next: the event keeps where it was.
            "staged_output_uri": None,
            "staged_result": None,
        },
    )


def retried(
    claim: Claim, *, now: datetime, error_code: str, error_message: str, next_attempt_at: datetime
) -> Transition:
    """Another attempt due at `next_attempt_at`, whose message is still to be sent."""
    return Transition(
        kind=EventKind.RETRIED,
        at=now,
        actor=claim.worker,
        reason=error_message,
        details={
            "error_code": error_code,
            "attempt": claim.attempt,
            "next_attempt_at": iso_utc(next_attempt_at),
        },
        changes={
            "error_code": error_code,
            "error_message": error_message,
            "next_attempt_at": next_attempt_at,
            "lease_expires_at": None,
            "sent_at": None,
        },
    )


def failed(claim: Claim, *, now: datetime, error_code: str, error_message: str) -> Transition:
    return _failure(
        claim.job,
        actor=claim.worker,
        now=now,
        error_code=error_code,
        error_message=error_message,
        attempt=claim.attempt,
    )


def handed_back(claim: Claim, *, now: datetime, reason: str) -> Transition:
    """The claimed attempt given back unspent: the job waits again as before the claim."""
    return Transition(
        kind=EventKind.HANDED_BACK,
        at=now,
        actor=claim.worker,
        reason=reason,
        details={"handed_back_attempt": claim.attempt},
        changes={
            "attempts": claim.attempt - 1,
            "worker": None,
            "started_at": None,
            "lease_expires_at": None,
            "sent_at": None,
        },
    )


# --- Delivery ---------------------------------------------------------------------------------


def sent(now: datetime) -> dict[str, Any]:
    """The fields that recording a sent wake-up message writes (no event)."""
    return {"sent_at": now, "enqueued_at": now, "updated_at": now}


def _failure(
    job: Job, *, actor: str, now: datetime, error_code: str, error_message: str, **details: Any
) -> Transition:
    """A final failure of `job`; `details` says of which attempt."""
    return Transition(
        kind=EventKind.FAILED,
        at=now,
        actor=actor,
        reason=error_message,
        details={"error_code": error_code, **details},
        changes={
            "error_code": error_code,
            "error_message": error_message,
            "finished_at": now,
            "lease_expires_at": None,
            **_webhook_due(job, now),
        },
    )


# --- Webhooks -----------------------------------------------------------------------------------

_NO_WEBHOOK: Final[Mapping[str, Any]] = MappingProxyType(
    {"webhook_id": None, "webhook_state": None, "webhook_attempts": 0, "webhook_next_at": None}
)


def _webhook_due(job: Job, now: datetime) -> Mapping[str, Any]:
    """The outbox fields an outcome of `job` writes: a webhook of its own id, due now, when the
    job has a callback URL."""
    if job.callback_url is None:
        return _NO_WEBHOOK
    return {
        "webhook_id": f"msg_{uuid.uuid4().hex}",
        "webhook_state": WebhookState.PENDING,
        "webhook_attempts": 0,
        "webhook_next_at": now,
    }


def webhook_taken(now: datetime, hold_s: float) -> dict[str, Any]:
    """A deliverer holds a due webhook for `hold_s` (no event): another may take it after, if
    this one died before recording what happened."""
    return {"webhook_next_at": now + timedelta(seconds=hold_s)}


def webhook_sent(job: Job, *, actor: str, now: datetime, status_code: int) -> Transition:
    attempt = job.webhook_attempts + 1
    return Transition(
        kind=EventKind.WEBHOOK_SENT,
        at=now,
        actor=actor,
        details={"webhook_id": job.webhook_id, "attempt": attempt, "status_code": status_code},
        changes={
            "webhook_state": WebhookState.SENT,
            "webhook_attempts": attempt,
            "webhook_next_at": None,
        },
    )


def webhook_missed(
    job: Job, *, actor: str, now: datetime, problem: str, retry_at: datetime | None
) -> Transition:
    """An attempt that failed (`problem` says how): retried at `retry_at`, or, when None, the
    last one."""
    attempt = job.webhook_attempts + 1
    details: dict[str, Any] = {"webhook_id": job.webhook_id, "attempt": attempt}
    if retry_at is None:
        return Transition(
            kind=EventKind.WEBHOOK_FAILED,
            at=now,
            actor=actor,
            reason=problem,
            details=details,
            changes={
                "webhook_state": WebhookState.FAILED,
                "webhook_attempts": attempt,
                "webhook_next_at": None,
            },
        )
    return Transition(
        kind=EventKind.WEBHOOK_RETRY,
        at=now,
        actor=actor,
        reason=problem,
        details=details | {"next_attempt_at": iso_utc(retry_at)},
        changes={"webhook_attempts": attempt, "webhook_next_at": retry_at},
    )


def webhook_resent(now: datetime) -> dict[str, Any]:
    """A failed webhook due again now, with fresh attempts and the same id (no event: the
    attempts record what happens)."""
    return {"webhook_state": WebhookState.PENDING, "webhook_attempts": 0, "webhook_next_at": now}
