"""The job store on PostgreSQL or SQLite: every state change in one transaction with its event
row.

Callers get immutable snapshots (`Job`, `JobEvent`), never ORM rows. Every change is a guarded
UPDATE checked through its row count: a duplicated or redelivered message finds nothing to
claim, a stale worker (whose job was cancelled, or reclaimed after its lease expired) cannot
overwrite the outcome that another party recorded, and admin changes need no row locks either.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, UnaryExpression, and_, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from toonq.shared.db.engine import translate_db_errors
from toonq.shared.db.schema import Base, JobEventRow, JobRow
from toonq.shared.errors import JobNotFoundError
from toonq.shared.job import Job, JobEvent, JobSpec, utc_now
from toonq.shared.jobstore.selections import Clause, Order, Selection
from toonq.shared.jobstore.store import JobStore
from toonq.shared.jobstore.transaction import Transaction
from toonq.shared.jobstore.transitions import Transition

Snapshot = TypeVar("Snapshot", Job, JobEvent)


class SqlJobStore(JobStore):
    """Creates, reads and transitions jobs. Thread-safe: every call uses its own session."""

    def __init__(
        self, sessions: sessionmaker[Session], *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        super().__init__(clock=clock)
        self._sessions = sessions

    @contextmanager
    def _transaction(self) -> Iterator[SqlTransaction]:
        with translate_db_errors(), self._sessions.begin() as session:
            yield SqlTransaction(session)

    def _create_at_once(
        self, specs: builtins.list[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        try:
            return super()._create_at_once(specs, actor=actor)
        except IntegrityError:
            if len(specs) > 1:
                # A concurrent producer took one of the keys: the batch was rolled back, and each
                # job is created in a transaction of its own.
                return [self.create(spec, actor=actor) for spec in specs]
            # Another producer inserted the same key between our read and our insert.
            (spec,) = specs
            existing = self._existing_after_race(spec)
            if existing is None:
                raise
            return [(existing.reuse_for(spec), False)]

    def _existing_after_race(self, spec: JobSpec) -> Job | None:
        if spec.idempotency_key is None:
            return None
        with self._transaction() as transaction:
            return transaction.with_keys([spec.idempotency_key]).get(spec.idempotency_key)


class SqlTransaction(Transaction):
    """A session's transaction."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def load(self, job_id: uuid.UUID) -> Job:
        # populate_existing: a guarded UPDATE may have changed the row since the session loaded it.
        row = self._session.get(JobRow, job_id, populate_existing=True)
        if row is None:
            raise JobNotFoundError(f"job {job_id} not found")
        return _snapshot(Job, row)

    def select(
        self, selection: Selection, order: Order, limit: int | None = None
    ) -> builtins.list[Job]:
        query = (
            select(JobRow)
            .where(_condition(selection))
            .order_by(*map(_order_by, order))
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        return [_snapshot(Job, row) for row in self._session.scalars(query)]

    def with_keys(self, keys: Iterable[str]) -> dict[str, Job]:
        keys = builtins.list(keys)
        if not keys:
            return {}
        rows = self._session.scalars(select(JobRow).where(JobRow.idempotency_key.in_(keys)))
        jobs = [_snapshot(Job, row) for row in rows]
        return {job.idempotency_key: job for job in jobs if job.idempotency_key is not None}

    def events_of(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        query = select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)
        return [_snapshot(JobEvent, row) for row in self._session.scalars(query)]

    def insert(self, creation: Transition) -> Job:
        row = JobRow(**creation.values)
        self._session.add(row)
        self._session.flush()
        self.record(row.id, creation)
        return _snapshot(Job, row)

    def update(self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]) -> bool:
        statement = update(JobRow).where(JobRow.id == job_id, _condition(guard)).values(**values)
        return self._session.connection().execute(statement).rowcount == 1

    def record(self, job_id: uuid.UUID, transition: Transition) -> None:
        self._session.add(JobEventRow(job_id=job_id, **transition.event))


def _snapshot(cls: type[Snapshot], row: Base) -> Snapshot:
    """The snapshot of `row`, whose attributes are named as the snapshot's fields."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


def _condition(selection: Selection) -> ColumnElement[bool]:
    """The condition on a job's row that `selection` is."""
    return or_(*(_clause_condition(clause) for clause in selection.clauses))


def _clause_condition(clause: Clause) -> ColumnElement[bool]:
    def column(name: str) -> Any:
        return getattr(JobRow, name)

    conditions = [column(name) == value for name, value in clause.equal.items()]
    conditions += [column(name).in_(sorted(values)) for name, values in clause.among.items()]
    conditions += [column(name) < limit for name, limit in clause.before.items()]
    conditions += [column(name) >= limit for name, limit in clause.not_before.items()]
    conditions += [
        column(name).is_(None) if empty else column(name).is_not(None)
        for name, empty in clause.empty.items()
    ]
    return and_(true(), *conditions)


def _order_by(name: str) -> UnaryExpression[Any]:
    column: ColumnElement[Any] = getattr(JobRow, name.removeprefix("-"))
    return column.desc() if name.startswith("-") else column.asc()
