"""The job store on PostgreSQL or SQLite: every state change in one transaction with its event
row.

Callers get immutable snapshots (`Job`, `JobEvent`), never ORM rows. Every change is a guarded
UPDATE checked through its row count: a duplicated or redelivered message finds nothing to
claim, a stale worker (whose job was cancelled, or reclaimed after its lease expired) cannot
overwrite the outcome that another party recorded, and admin changes need no row locks either.

The statements are SQLAlchemy Core on one connection per transaction, not the ORM: a worker
runs several per job, and the ORM's identity map and unit of work would cost more Python than
the round trips themselves. A change returns its row (`UPDATE ... RETURNING`), so nothing is
read again after it is written.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    Select,
    UnaryExpression,
    and_,
    insert,
    inspect,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError

from toonq.shared.db.engine import translate_db_errors
from toonq.shared.db.schema import Base, JobEventRow, JobRow
from toonq.shared.errors import JobNotFoundError
from toonq.shared.job import Job, JobEvent, JobParams, JobSpec, utc_now
from toonq.shared.jobstore.selections import Clause, Order, Selection
from toonq.shared.jobstore.store import JobStore
from toonq.shared.jobstore.transaction import Transaction
from toonq.shared.jobstore.transitions import Transition

_JOBS: Final = Base.metadata.tables[JobRow.__tablename__]
_EVENTS: Final = Base.metadata.tables[JobEventRow.__tablename__]
#: The columns `JobParams` is stored in, in the order of its fields.
_PARAM_COLUMNS: Final[tuple[Column[Any], ...]] = tuple(inspect(JobRow).composites["params"].columns)
_JOB_FIELDS: Final = tuple(f.name for f in fields(Job) if f.name != "params")
_EVENT_FIELDS: Final = tuple(f.name for f in fields(JobEvent))
#: Built once: an event is written with every change, and building costs more than running.
_INSERT_EVENT: Final = insert(_EVENTS)


class SqlJobStore(JobStore):
    """Creates, reads and transitions jobs. Thread-safe: every call uses its own connection."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(clock=clock)
        self._engine = engine

    @contextmanager
    def _transaction(self) -> Iterator[SqlTransaction]:
        with translate_db_errors(), self._engine.begin() as connection:
            yield SqlTransaction(connection)

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
    """A connection's transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def load(self, job_id: uuid.UUID) -> Job:
        row = self._connection.execute(_jobs().where(_JOBS.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFoundError(f"job {job_id} not found")
        return _job(row)

    def select(
        self, selection: Selection, order: Order, limit: int | None = None
    ) -> builtins.list[Job]:
        query = _jobs().where(_condition(selection)).order_by(*map(_order_by, order)).limit(limit)
        return [_job(row) for row in self._connection.execute(query).mappings()]

    def with_keys(self, keys: Iterable[str]) -> dict[str, Job]:
        keys = builtins.list(keys)
        if not keys:
            return {}
        query = _jobs().where(_JOBS.c.idempotency_key.in_(keys))
        jobs = [_job(row) for row in self._connection.execute(query).mappings()]
        return {job.idempotency_key: job for job in jobs if job.idempotency_key is not None}

    def events_of(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        query = select(_EVENTS).where(_EVENTS.c.job_id == job_id).order_by(_EVENTS.c.id)
        rows = self._connection.execute(query).mappings()
        return [JobEvent(**{name: row[name] for name in _EVENT_FIELDS}) for row in rows]

    def insert(self, creation: Transition) -> Job:
        statement = insert(_JOBS).values(_columns(creation.values)).returning(_JOBS)
        job = _job(self._connection.execute(statement).mappings().one())
        self.record(job.id, creation)
        return job

    def update(self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]) -> Job | None:
        statement = (
            update(_JOBS)
            .where(_JOBS.c.id == job_id, _condition(guard))
            .values(_columns(values))
            .returning(_JOBS)
        )
        row = self._connection.execute(statement).mappings().first()
        return None if row is None else _job(row)

    def record(self, job_id: uuid.UUID, transition: Transition) -> None:
        self._connection.execute(_INSERT_EVENT, {"job_id": job_id, **transition.event})


def _jobs() -> Select[Any]:
    return select(_JOBS)


def _job(row: RowMapping) -> Job:
    """The snapshot of a job's row."""
    params = JobParams(*(row[column.name] for column in _PARAM_COLUMNS))
    return Job(params=params, **{name: row[name] for name in _JOB_FIELDS})


def _columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """A job's field values by column: `params` spread over its columns."""
    columns = dict(values)
    params = columns.pop("params", None)
    if params is not None:
        columns |= {
            column.name: getattr(params, f.name)
            for column, f in zip(_PARAM_COLUMNS, fields(JobParams), strict=True)
        }
    return columns


def _condition(selection: Selection) -> ColumnElement[bool]:
    """The condition on a job's row that `selection` is."""
    return or_(*(_clause_condition(clause) for clause in selection.clauses))


def _clause_condition(clause: Clause) -> ColumnElement[bool]:
    def column(name: str) -> Any:
        return _JOBS.c[name]

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
    column: ColumnElement[Any] = _JOBS.c[name.removeprefix("-")]
    return column.desc() if name.startswith("-") else column.asc()
