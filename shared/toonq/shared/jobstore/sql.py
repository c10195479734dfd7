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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    MappingResult,
    RowMapping,
    bindparam,
    insert,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError

from toonq.shared.db.clock import DatabaseClock
from toonq.shared.db.engine import translate_db_errors
from toonq.shared.errors import JobNotFoundError
from toonq.shared.job import Claim, Job, JobEvent, JobParams, JobSpec, utc_now
from toonq.shared.jobstore import selections, statements, transitions
from toonq.shared.jobstore.finishes import FinishListener, PostgresFinishListener
from toonq.shared.jobstore.selections import Order, Selection
from toonq.shared.jobstore.store import JobStore
from toonq.shared.jobstore.transaction import Transaction, merged_values
from toonq.shared.jobstore.transitions import Transition

_JOBS: Final = statements.JOBS
_EVENTS: Final = statements.EVENTS
_JOB_FIELDS: Final = tuple(f.name for f in fields(Job) if f.name != "params")
_EVENT_FIELDS: Final = tuple(f.name for f in fields(JobEvent))
_LOAD: Final = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"))
#: Transaction-scoped advisory locks on the URIs' hashes, taken in one order (sorted) so that two
#: batches sharing URIs queue behind each other rather than deadlock. A collision of two hashes
#: only makes two submits wait for each other.
_LOCK_OUTPUTS: Final = text(
    "SELECT pg_advisory_xact_lock(lock_key) FROM ("
    " SELECT DISTINCT hashtextextended(uri, 0) AS lock_key"
    " FROM unnest(CAST(:uris AS text[])) AS uri ORDER BY lock_key) AS lock_keys"
)
#: Built once: an event is written with every change, and building costs more than running.
_INSERT_EVENT: Final = insert(_EVENTS)
_INSERT_JOBS: Final = insert(_JOBS).returning(_JOBS, sort_by_parameter_order=True)


class SqlJobStore(JobStore):
    """Creates, reads and transitions jobs. Thread-safe: every call uses its own connection.
    Its time is the database's (`DatabaseClock`), read through the host's `clock`."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._time = DatabaseClock(engine, clock)
        super().__init__(clock=self._time)
        self._engine = engine
        # PostgreSQL writes a change and its events in one statement (`_PostgresTransaction`),
        # which needs no BEGIN and COMMIT around it.
        self._postgres = engine.dialect.name == "postgresql"
        self._kind = _PostgresTransaction if self._postgres else SqlTransaction
        # One round trip instead of four (BEGIN, the read, the write, COMMIT). SQLite takes its
        # write lock as a transaction begins anyway.
        self._claims_in_one_statement = self._postgres
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def listen_for_finishes(self) -> FinishListener:
        if self._postgres:
            return PostgresFinishListener(self._engine)
        return super().listen_for_finishes()

    @contextmanager
    def _transaction(self, *, single_write: bool = False) -> Iterator[SqlTransaction]:
        with translate_db_errors():
            if single_write and self._postgres:
                with self._autocommit.connect() as connection:
                    self._time.measure_if_due(connection)
                    yield self._kind(connection)
            else:
                with self._engine.begin() as connection:
                    self._time.measure_if_due(connection)
                    yield self._kind(connection)

    def _create_at_once(
        self, specs: builtins.list[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        try:
            return super()._create_at_once(specs, actor=actor)
        except IntegrityError:
            self._refuse_taken_ids(specs)
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

    def _refuse_taken_ids(self, specs: builtins.list[JobSpec]) -> None:
        """DuplicateJobIdError if a spec's id is another job's, as the in-memory store says at
        once: a stored job's, or an earlier spec's, with another idempotency key or none (a job
        with the spec's own key is the one the spec asks for, created concurrently)."""
        with self._transaction() as transaction:
            stored = transaction.select(selections.with_ids(spec.id for spec in specs), ("id",))
        keys: dict[uuid.UUID, str | None] = {job.id: job.idempotency_key for job in stored}
        for spec in specs:
            if spec.id in keys and (keys[spec.id] is None or keys[spec.id] != spec.idempotency_key):
                raise transitions.duplicate_id(spec.id)
            keys[spec.id] = spec.idempotency_key

    def _existing_after_race(self, spec: JobSpec) -> Job | None:
        if spec.idempotency_key is None:
            return None
        with self._transaction() as transaction:
            return transaction.with_keys([spec.idempotency_key]).get(spec.idempotency_key)


class SqlTransaction(Transaction):
    """A connection's transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def _execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> MappingResult:
        return self._connection.execute(statement, parameters).mappings()

    def load(self, job_id: uuid.UUID) -> Job:
        row = self._execute(_LOAD, {"job_id": job_id}).first()
        if row is None:
            raise JobNotFoundError(f"job {job_id} not found")
        return _job(row)

    def select(
        self, selection: Selection, order: Order, limit: int | None = None
    ) -> builtins.list[Job]:
        bound = statements.selected(selection, order, limit)
        return [_job(row) for row in self._execute(bound.statement, bound.parameters)]

    def tenants(self, selection: Selection) -> builtins.list[str]:
        bound = statements.tenants_of(selection)
        return builtins.list(self._connection.execute(bound.statement, bound.parameters).scalars())

    def with_keys(self, keys: Iterable[str]) -> dict[str, Job]:
        keys = builtins.list(keys)
        if not keys:
            return {}
        query = select(_JOBS).where(_JOBS.c.idempotency_key.in_(keys))
        jobs = [_job(row) for row in self._execute(query)]
        return {job.idempotency_key: job for job in jobs if job.idempotency_key is not None}

    def reserve_outputs(self, output_uris: Iterable[str]) -> None:
        # PostgreSQL only: SQLite's transactions take the write lock as they begin.
        if self._connection.dialect.name == "postgresql":
            self._connection.execute(_LOCK_OUTPUTS, {"uris": sorted(set(output_uris))})

    def events_of(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        query = select(_EVENTS).where(_EVENTS.c.job_id == job_id).order_by(_EVENTS.c.id)
        rows = self._execute(query)
        return [JobEvent(**{name: row[name] for name in _EVENT_FIELDS}) for row in rows]

    def insert(self, creation: Transition) -> Job:
        (job,) = self.insert_all([creation])
        return job

    def insert_all(self, creations: Sequence[Transition]) -> builtins.list[Job]:
        if not creations:
            return []
        # Two statements for the whole batch: SQLAlchemy sends the rows as multi-row INSERTs
        # and hands back the jobs in the order of the creations.
        rows = self._connection.execute(
            _INSERT_JOBS, [statements.columns(creation.values) for creation in creations]
        )
        jobs = [_job(row) for row in rows.mappings()]
        events = [{"job_id": job.id, **c.event} for job, c in zip(jobs, creations, strict=True)]
        self._connection.execute(_INSERT_EVENT, events)
        return jobs

    def update(self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]) -> Job | None:
        bound = statements.guarded_update(job_id, guard, values)
        row = self._execute(bound.statement, bound.parameters).first()
        return None if row is None else _job(row)

    def update_matched(
        self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]
    ) -> bool:
        bound = statements.guarded_update(job_id, guard, values, whole_row=False)
        return self._matched(bound)

    def update_all(self, guard: Selection, values: Mapping[str, Any]) -> builtins.set[uuid.UUID]:
        bound = statements.guarded_update_all(guard, values)
        return set(self._connection.execute(bound.statement, bound.parameters).scalars())

    def _matched(self, bound: statements.Bound) -> bool:
        return self._connection.execute(bound.statement, bound.parameters).first() is not None

    def record(self, job_id: uuid.UUID, transition: Transition) -> None:
        self._connection.execute(_INSERT_EVENT, {"job_id": job_id, **transition.event})


class _PostgresTransaction(SqlTransaction):
    """Writes a change and its events in one statement, one round trip instead of one per row."""

    def apply(self, job_id: uuid.UUID, guard: Selection, *steps: Transition) -> Job | None:
        bound = statements.guarded_update_with_events(
            job_id, guard, merged_values(steps), [step.event for step in steps]
        )
        row = self._execute(bound.statement, bound.parameters).first()
        return None if row is None else _job(row)

    def apply_matched(self, job_id: uuid.UUID, guard: Selection, *steps: Transition) -> bool:
        bound = statements.guarded_update_with_events(
            job_id, guard, merged_values(steps), [step.event for step in steps], whole_row=False
        )
        return self._matched(bound)

    def claim_if_waiting(
        self, job_id: uuid.UUID, *, due_by: datetime | None, start: Transition
    ) -> Claim | None:
        bound = statements.claim_if_waiting(
            job_id, due_by=due_by, start=start.values, event=start.event
        )
        row = self._execute(bound.statement, bound.parameters).first()
        if row is None:
            return None
        job = _job(row)
        waited = (row[f"waited_{name}"] for name in statements.WAITED)
        return Claim(job, job.attempts, waited_since=next((t for t in waited if t), None))


def _job(row: RowMapping) -> Job:
    """The snapshot of a job's row."""
    params = JobParams(*(row[column.name] for column in statements.PARAM_COLUMNS))
    return Job(params=params, **{name: row[name] for name in _JOB_FIELDS})
