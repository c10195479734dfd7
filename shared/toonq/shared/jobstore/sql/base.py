"""What every role of the SQL job store shares: sessions, the clock, snapshots and the guarded
UPDATE that applies each transition."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, or_, update
from sqlalchemy.orm import Session, sessionmaker

from toonq.shared.db.engine import translate_db_errors
from toonq.shared.db.schema import Base, JobEventRow, JobRow
from toonq.shared.errors import JobNotFoundError
from toonq.shared.job import Claim, Job, JobEvent, JobStatus, utc_now
from toonq.shared.jobstore.selections import Clause, Selection
from toonq.shared.jobstore.transitions import Transition

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


def where(selection: Selection) -> ColumnElement[bool]:
    """The condition on a job's row that `selection` is."""
    return or_(*(_where(clause) for clause in selection.clauses))


def _where(clause: Clause) -> ColumnElement[bool]:
    conditions = [JobRow.status == clause.status]
    if clause.sent is not None:
        sent = JobRow.enqueued_at.is_not(None) if clause.sent else JobRow.enqueued_at.is_(None)
        conditions.append(sent)
    conditions += [getattr(JobRow, name) < limit for name, limit in clause.before.items()]
    return and_(*conditions)


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

    def _apply(
        self,
        session: Session,
        job_id: uuid.UUID,
        transition: Transition,
        *guard: ColumnElement[bool],
    ) -> bool:
        """Write `transition` WHERE `guard` holds, with its event; False (and nothing written) if
        the guard did not hold."""
        if not self._cas(session, job_id, *guard, **transition.values):
            return False
        self._record(session, job_id, transition)
        return True

    def _record(self, session: Session, job_id: uuid.UUID, transition: Transition) -> None:
        """Add `transition`'s event to the job's history."""
        session.add(JobEventRow(job_id=job_id, **transition.event))
