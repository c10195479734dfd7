"""What every role of the SQL job store shares: sessions, the clock, snapshots and the guarded
UPDATE that each transition is."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session, sessionmaker

from toonq.shared.db.engine import translate_db_errors
from toonq.shared.db.schema import Base, JobEventRow, JobRow
from toonq.shared.errors import JobNotFoundError
from toonq.shared.job import Claim, EventKind, Job, JobEvent, JobStatus, utc_now

Snapshot = TypeVar("Snapshot", Job, JobEvent)


def snapshot(cls: type[Snapshot], row: Base) -> Snapshot:
    """The snapshot of `row`, whose attributes are named as the snapshot's fields."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


def load(session: Session, job_id: uuid.UUID) -> JobRow:
    # populate_existing: a guarded UPDATE may have changed the row since the session loaded it.
    row = session.get(JobRow, job_id, populate_existing=True)
    if row is None:
        raise JobNotFoundError(f"job {job_id} not found")
    return row


def attempt_guard(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    """Whether the claimed attempt is still the job's current one. started_at is stamped anew by
    every claim: with attempts it fences off a stale worker even after a requeue reset the
    attempt count."""
    return (
        JobRow.status == JobStatus.RUNNING,
        JobRow.attempts == claim.attempt,
        JobRow.started_at == claim.job.started_at,
    )


class SqlStoreBase:
    """Sessions and the clock; every role's transaction and transition goes through here."""

    def __init__(
        self, sessions: sessionmaker[Session], *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with translate_db_errors(), self._sessions.begin() as session:
            yield session

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
