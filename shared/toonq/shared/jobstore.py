"""The job store: every job state change, each in one transaction with its event row.

Callers get immutable snapshots (`Job`, `JobEvent`), never ORM rows. A transition moves a job to
the status its event's kind leads to (`EventKind.status`), so the history and the row agree.

Worker-side transitions are compare-and-set UPDATEs on (job id, status, attempt), checked through
their row count: a duplicated or redelivered message finds nothing to claim, and a stale worker
(whose job was cancelled, or reclaimed after its lease expired) cannot overwrite the outcome that
another party recorded. Admin transitions (cancel, requeue) use the same guarded UPDATEs, so they
need no row locks either.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from toonq.shared.db.engine import translate_db_errors
from toonq.shared.db.schema import Base, JobEventRow, JobRow
from toonq.shared.errors import (
    IdempotencyConflictError,
    InvalidRequestError,
    InvalidTransitionError,
    JobNotFoundError,
    WorkerLostError,
)
from toonq.shared.job import Claim, EventKind, Job, JobEvent, JobSpec, JobStatus, iso_utc

WAITING_STATUSES = (JobStatus.QUEUED, JobStatus.RETRYING)
CANCELLABLE_STATUSES = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.RUNNING)
REQUEUEABLE_STATUSES = (JobStatus.FAILED, JobStatus.CANCELLED)

Snapshot = TypeVar("Snapshot", Job, JobEvent)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _snapshot(cls: type[Snapshot], row: Base) -> Snapshot:
    """The snapshot of `row`, whose attributes are named as the snapshot's fields."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


def _status(value: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        choices = ", ".join(status.value for status in JobStatus)
        raise InvalidRequestError(f"unknown status {value!r}; expected one of {choices}") from None


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise InvalidRequestError(f"{name} must be a timezone-aware datetime")
    return value


class JobStore:
    """Creates, reads and transitions jobs. Thread-safe: every call uses its own session."""

    def __init__(
        self, sessions: sessionmaker[Session], *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with translate_db_errors(), self._sessions.begin() as session:
            yield session

    # --- Producer side ---------------------------------------------------------------------

    def create(self, spec: JobSpec, *, actor: str) -> tuple[Job, bool]:
        """Create a job; returns (job, created). A repeated idempotency key returns the existing
        job with created=False, or raises IdempotencyConflictError if its parameters differ."""
        try:
            with self._transaction() as session:
                if spec.idempotency_key is not None:
                    existing = self._by_key(session, spec.idempotency_key)
                    if existing is not None:
                        return _reuse(existing, spec), False
                return self._insert(session, spec, actor=actor), True
        except IntegrityError:
            # Another producer inserted the same key between our read and our insert.
            existing = self._existing_after_race(spec)
            if existing is None:
                raise
            return _reuse(existing, spec), False

    def create_many(
        self, specs: Iterable[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        """`create` for a batch, in one transaction, so an idempotency conflict writes nothing
        (except after losing a race for a key to another producer: each job is then created in
        a transaction of its own)."""
        specs = builtins.list(specs)
        keys = sorted({spec.idempotency_key for spec in specs if spec.idempotency_key is not None})
        try:
            with self._transaction() as session:
                known = session.scalars(select(JobRow).where(JobRow.idempotency_key.in_(keys)))
                by_key = {row.idempotency_key: _snapshot(Job, row) for row in known}
                results: builtins.list[tuple[Job, bool]] = []
                for spec in specs:
                    existing = by_key.get(spec.idempotency_key)
                    if existing is not None:
                        results.append((_reuse(existing, spec), False))
                        continue
                    job = self._insert(session, spec, actor=actor)
                    if spec.idempotency_key is not None:
                        by_key[spec.idempotency_key] = job
                    results.append((job, True))
                return results
        except IntegrityError:
            # A concurrent producer took one of the keys: the batch was rolled back.
            return [self.create(spec, actor=actor) for spec in specs]

    def _by_key(self, session: Session, key: str) -> Job | None:
        row = session.scalars(select(JobRow).where(JobRow.idempotency_key == key)).one_or_none()
        return None if row is None else _snapshot(Job, row)

    def _existing_after_race(self, spec: JobSpec) -> Job | None:
        if spec.idempotency_key is None:
            return None
        with self._transaction() as session:
            return self._by_key(session, spec.idempotency_key)

    def _insert(self, session: Session, spec: JobSpec, *, actor: str) -> Job:
        now = self._clock()
        row = JobRow(
            id=spec.id,
            idempotency_key=spec.idempotency_key,
            status=EventKind.CREATED.status,
            input_uri=spec.input_uri,
            output_uri=spec.output_uri,
            params=spec.params,
            priority=spec.priority,
            attempts=0,
            max_attempts=spec.max_attempts,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        self._event(session, row.id, EventKind.CREATED, actor=actor, at=now)
        return _snapshot(Job, row)

    # --- Reads -----------------------------------------------------------------------------

    def get(self, job_id: uuid.UUID) -> Job:
        with self._transaction() as session:
            return _snapshot(Job, _load(session, job_id))

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
            query = query.where(JobRow.status == _status(status))
        if error_code is not None:
            query = query.where(JobRow.error_code == error_code)
        if _aware(since, "since") is not None:
            query = query.where(JobRow.created_at >= since)
        with self._transaction() as session:
            return [_snapshot(Job, row) for row in session.scalars(query)]

    def events(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""
        with self._transaction() as session:
            _load(session, job_id)
            rows = session.scalars(
                select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)
            )
            return [_snapshot(JobEvent, row) for row in rows]

    # --- Admin transitions -----------------------------------------------------------------

    def cancel(self, job_id: uuid.UUID, *, actor: str, reason: str | None = None) -> Job:
        """Cancel a queued, retrying or running job. A running job's worker finds out when it
        tries to record its outcome (which is then discarded)."""
        with self._transaction() as session:
            now = self._clock()
            cancelled = self._transition(
                session,
                job_id,
                EventKind.CANCELLED,
                JobRow.status.in_(CANCELLABLE_STATUSES),
                actor=actor,
                at=now,
                reason=reason,
                finished_at=now,
                next_attempt_at=None,
                lease_expires_at=None,
                enqueued_at=None,
            )
            if not cancelled:
                job = _snapshot(Job, _load(session, job_id))
                raise InvalidTransitionError(
                    f"job {job_id} is {job.status}: only queued, retrying or running jobs "
                    "can be cancelled"
                )
            return _snapshot(Job, _load(session, job_id))

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
                rows = _rows_matching(session, _status(status), error_code, _aware(since, "since"))
            if dry_run:
                return [_snapshot(Job, row) for row in rows]
            now = self._clock()
            requeued = []
            for row in rows:
                previous = _snapshot(Job, row)
                if not self._requeue_one(session, previous, actor=actor, at=now, reason=reason):
                    if job_ids is None:
                        continue  # changed under us (e.g. requeued by another operator)
                    raise InvalidTransitionError(f"job {previous.id} changed while requeueing")
                requeued.append(_snapshot(Job, _load(session, previous.id)))
            return requeued

    def _requeue_one(
        self, session: Session, job: Job, *, actor: str, at: datetime, reason: str | None
    ) -> bool:
        return self._transition(
            session,
            job.id,
            EventKind.REQUEUED,
            JobRow.status == job.status,
            actor=actor,
            at=at,
            reason=reason,
            details={
                "from": job.status.value,
                "error_code": job.error_code,
                "attempts": job.attempts,
            },
            attempts=0,
            error_code=None,
            error_message=None,
            worker=None,
            started_at=None,
            finished_at=None,
            next_attempt_at=None,
            lease_expires_at=None,
            enqueued_at=None,
        )

    # --- Worker side -----------------------------------------------------------------------

    def claim(self, job_id: uuid.UUID, *, worker: str, lease_s: float) -> Claim | None:
        """Start the next attempt of a job, or return None if it is not claimable: finished,
        cancelled, or running under a live lease (a duplicate message).

        A running job whose lease expired lost its worker: it is reclaimed, unless it already
        used all its attempts, in which case it fails with `worker_lost`.
        """
        with self._transaction() as session:
            now = self._clock()
            job = _snapshot(Job, _load(session, job_id))
            guard: builtins.list[ColumnElement[bool]] = [
                JobRow.status == job.status,
                JobRow.attempts == job.attempts,
            ]
            lost = job.status is JobStatus.RUNNING and _lease_expired(job, now)
            if lost:
                guard.append(JobRow.lease_expires_at < now)
                if job.attempts >= job.max_attempts:
                    self._fail_lost(session, job, guard, worker=worker, now=now)
                    return None
            elif job.status not in WAITING_STATUSES:
                return None
            attempt = job.attempts + 1
            # Not a `_transition`: a reclaim records its own event first.
            claimed = self._cas(
                session,
                job_id,
                *guard,
                status=EventKind.STARTED.status,
                attempts=attempt,
                worker=worker,
                started_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s),
                next_attempt_at=None,
                enqueued_at=None,
                updated_at=now,
            )
            if not claimed:
                return None  # another worker won the race
            if lost:
                self._event(
                    session,
                    job_id,
                    EventKind.RECLAIMED,
                    actor=worker,
                    at=now,
                    reason="the previous worker's lease expired",
                    details={"lost_worker": job.worker, "lost_attempt": job.attempts},
                )
            self._event(
                session,
                job_id,
                EventKind.STARTED,
                actor=worker,
                at=now,
                details={"attempt": attempt},
            )
            return Claim(_snapshot(Job, _load(session, job_id)), attempt)

    def _fail_lost(
        self,
        session: Session,
        job: Job,
        guard: builtins.list[ColumnElement[bool]],
        *,
        worker: str,
        now: datetime,
    ) -> None:
        message = (
            f"worker {job.worker} stopped renewing its lease on attempt {job.attempts} "
            f"of {job.max_attempts}"
        )
        code = WorkerLostError.code
        self._transition(
            session,
            job.id,
            EventKind.FAILED,
            *guard,
            actor=worker,
            at=now,
            reason=message,
            details={"error_code": code, "attempt": job.attempts, "lost_worker": job.worker},
            error_code=code,
            error_message=message,
            finished_at=now,
            lease_expires_at=None,
        )

    def mark_succeeded(
        self,
        claim: Claim,
        *,
        model_name: str,
        model_revision: str | None,
        image_width: int,
        image_height: int,
        timings: Mapping[str, float],
    ) -> bool:
        """Record success; False (and nothing written) if the claim is no longer current."""
        with self._transaction() as session:
            now = self._clock()
            return self._transition(
                session,
                claim.job.id,
                EventKind.SUCCEEDED,
                *_attempt_guard(claim),
                actor=claim.worker,
                at=now,
                details={"attempt": claim.attempt},
                model_name=model_name,
                model_revision=model_revision,
                image_width=image_width,
                image_height=image_height,
                timings=dict(timings),
                error_code=None,
                error_message=None,
                finished_at=now,
                lease_expires_at=None,
            )

    def mark_retrying(
        self, claim: Claim, *, error_code: str, error_message: str, next_attempt_at: datetime
    ) -> bool:
        """Schedule another attempt at `next_attempt_at`; False if the claim is no longer
        current. Sending the delayed message is the caller's job (then `mark_enqueued`)."""
        with self._transaction() as session:
            return self._transition(
                session,
                claim.job.id,
                EventKind.RETRIED,
                *_attempt_guard(claim),
                actor=claim.worker,
                at=self._clock(),
                reason=error_message,
                details={
                    "error_code": error_code,
                    "attempt": claim.attempt,
                    "next_attempt_at": iso_utc(next_attempt_at),
                },
                error_code=error_code,
                error_message=error_message,
                next_attempt_at=next_attempt_at,
                lease_expires_at=None,
                enqueued_at=None,
            )

    def mark_failed(self, claim: Claim, *, error_code: str, error_message: str) -> bool:
        """Record a final failure; False (and nothing written) if the claim is no longer current."""
        with self._transaction() as session:
            now = self._clock()
            return self._transition(
                session,
                claim.job.id,
                EventKind.FAILED,
                *_attempt_guard(claim),
                actor=claim.worker,
                at=now,
                reason=error_message,
                details={"error_code": error_code, "attempt": claim.attempt},
                error_code=error_code,
                error_message=error_message,
                finished_at=now,
                lease_expires_at=None,
            )

    def hand_back(self, claim: Claim, *, reason: str) -> Job | None:
        """Give a running attempt back to the queue unfinished (its worker is shutting down):
        the job waits again without having spent the attempt. Returns the queued job, or None
        if the claim is no longer current (the attempt finished or was taken away)."""
        with self._transaction() as session:
            if not self._transition(
                session,
                claim.job.id,
                EventKind.HANDED_BACK,
                *_attempt_guard(claim),
                actor=claim.worker,
                at=self._clock(),
                reason=reason,
                details={"handed_back_attempt": claim.attempt},
                attempts=claim.attempt - 1,
                worker=None,
                started_at=None,
                lease_expires_at=None,
                enqueued_at=None,
            ):
                return None
            return _snapshot(Job, _load(session, claim.job.id))

    def extend_lease(self, claim: Claim, lease_s: float) -> bool:
        """Heartbeat of a long attempt; False if the claim is no longer current."""
        with self._transaction() as session:
            now = self._clock()
            return self._cas(
                session,
                claim.job.id,
                *_attempt_guard(claim),
                lease_expires_at=now + timedelta(seconds=lease_s),
                updated_at=now,
            )

    # --- Delivery bookkeeping --------------------------------------------------------------

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
        now = _aware(now, "now") or self._clock()
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
            return [_snapshot(Job, row) for row in session.scalars(query)]

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
            return [_snapshot(Job, row) for row in session.scalars(query)]

    # --- Helpers ---------------------------------------------------------------------------

    def _cas(
        self,
        session: Session,
        job_id: uuid.UUID,
        *guard: ColumnElement[bool],
        **values: Any,
    ) -> bool:
        """UPDATE the job WHERE `guard` holds; True if it did (the compare-and-set succeeded)."""
        statement = update(JobRow).where(JobRow.id == job_id, *guard).values(**values)
        return session.connection().execute(statement).rowcount == 1

    def _transition(
        self,
        session: Session,
        job_id: uuid.UUID,
        kind: EventKind,
        *guard: ColumnElement[bool],
        actor: str,
        at: datetime,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        **values: Any,
    ) -> bool:
        """Move the job to the status `kind` leads to WHERE `guard` holds, and record the event;
        False (and nothing written) if the guard did not hold."""
        if not self._cas(session, job_id, *guard, status=kind.status, updated_at=at, **values):
            return False
        self._event(session, job_id, kind, actor=actor, at=at, reason=reason, details=details)
        return True

    def _event(
        self,
        session: Session,
        job_id: uuid.UUID,
        kind: EventKind,
        *,
        actor: str,
        at: datetime,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            JobEventRow(
                job_id=job_id, at=at, kind=kind, actor=actor, reason=reason, details=details
            )
        )


def _load(session: Session, job_id: uuid.UUID) -> JobRow:
    # populate_existing: a guarded UPDATE may have changed the row since the session loaded it.
    row = session.get(JobRow, job_id, populate_existing=True)
    if row is None:
        raise JobNotFoundError(f"job {job_id} not found")
    return row


def _reuse(existing: Job, spec: JobSpec) -> Job:
    if not existing.matches(spec):
        raise IdempotencyConflictError(
            f"idempotency key {spec.idempotency_key!r} is already used by job {existing.id} "
            "with different parameters"
        )
    return existing


def _attempt_guard(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    """Whether the claimed attempt is still the job's current one. started_at is stamped anew by
    every claim: with attempts it fences off a stale worker even after a requeue reset the
    attempt count."""
    return (
        JobRow.status == JobStatus.RUNNING,
        JobRow.attempts == claim.attempt,
        JobRow.started_at == claim.job.started_at,
    )


def _lease_expired(job: Job, now: datetime) -> bool:
    return job.lease_expires_at is not None and job.lease_expires_at < now


def _rows_to_requeue(session: Session, job_ids: builtins.list[uuid.UUID]) -> builtins.list[JobRow]:
    rows = []
    for job_id in dict.fromkeys(job_ids):  # each once, in the caller's order
        row = _load(session, job_id)
        if row.status not in REQUEUEABLE_STATUSES:
            raise InvalidTransitionError(
                f"job {job_id} is {row.status}: only failed or cancelled jobs can be requeued"
            )
        rows.append(row)
    return sorted(rows, key=lambda row: row.created_at)


def _rows_matching(
    session: Session, status: JobStatus, error_code: str | None, since: datetime | None
) -> builtins.list[JobRow]:
    if status not in REQUEUEABLE_STATUSES:
        raise InvalidRequestError(f"only failed or cancelled jobs can be requeued, not {status}")
    query = select(JobRow).where(JobRow.status == status).order_by(JobRow.created_at)
    if error_code is not None:
        query = query.where(JobRow.error_code == error_code)
    if since is not None:
        query = query.where(JobRow.created_at >= since)
    return builtins.list(session.scalars(query))
