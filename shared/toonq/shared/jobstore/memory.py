"""The job store in memory: a test double with the SQL store's behaviour, as dramatiq's
`StubBroker` is for its brokers.

It passes the same contract tests as `SqlJobStore` (`tests/integration/test_jobstore.py`): the
same transitions, guards, errors, history and orderings, so the processor, recovery and the
command line can be tested without a database. It keeps nothing beyond the object's life and is
safe to share between threads (one lock, held by each transaction), never between processes.

Jobs are immutable `Job` snapshots, replaced whole by each change; a guard is checked on the
current snapshot (`Selection.matches`), as the SQL store's is a WHERE clause on the row.
"""

from __future__ import annotations

import builtins
import itertools
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC, datetime
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from toonq.shared.errors import JobNotFoundError
from toonq.shared.job import Job, JobEvent, utc_now
from toonq.shared.jobstore.finishes import FinishAnnouncer, FinishListener
from toonq.shared.jobstore.selections import Order, Selection
from toonq.shared.jobstore.store import JobStore
from toonq.shared.jobstore.transaction import Transaction
from toonq.shared.jobstore.transitions import Transition, duplicate_id


def _stored(value: Any) -> Any:
    """`value` as the store keeps it: datetimes in UTC (naive ones refused, as by the SQL
    schema), mappings read-only copies."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: toonq stores aware UTC datetimes only")
        return value.astimezone(UTC)
    if isinstance(value, Mapping):
        return MappingProxyType(dict(value))
    return value


def _stored_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _stored(value) for name, value in values.items()}


#: A job's fields before its creation sets them.
_EMPTY_JOB: Mapping[str, Any] = dict.fromkeys(f.name for f in fields(Job))


class InMemoryJobStore(JobStore):
    """Creates, reads and transitions jobs held in memory. Thread-safe: one lock."""

    def __init__(self, *, clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(clock=clock)
        self._lock = threading.Lock()
        self._finishes = FinishAnnouncer()
        self._jobs: dict[uuid.UUID, Job] = {}
        self._events: dict[uuid.UUID, builtins.list[JobEvent]] = {}
        self._event_ids = itertools.count(1)

    @contextmanager
    def _transaction(self, *, single_write: bool = False) -> Iterator[Transaction]:
        with self._lock:
            transaction = _MemoryTransaction(self._jobs, self._events, self._event_ids)
            try:
                yield transaction
            except BaseException:
                transaction.roll_back()
                raise
        self._finishes.announce(transaction.finished)

    def listen_for_finishes(self) -> FinishListener:
        return self._finishes.listener()


class _MemoryTransaction(Transaction):
    """Changes the store's jobs and histories in place, keeping how to undo each change so that
    a transaction that raises writes nothing."""

    def __init__(
        self,
        jobs: dict[uuid.UUID, Job],
        events: dict[uuid.UUID, builtins.list[JobEvent]],
        event_ids: Iterator[int],
    ) -> None:
        self._jobs = jobs
        self._events = events
        self._event_ids = event_ids
        self._undo: builtins.list[Callable[[], object]] = []
        #: The jobs this transaction finished, announced once it is written.
        self.finished: builtins.list[uuid.UUID] = []

    def roll_back(self) -> None:
        for undo in reversed(self._undo):
            undo()

    def load(self, job_id: uuid.UUID) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"job {job_id} not found")
        return job

    def select(
        self, selection: Selection, order: Order, limit: int | None = None
    ) -> builtins.list[Job]:
        found = builtins.list(filter(selection.matches, self._jobs.values()))
        for name in reversed(order):  # stable sorts, by the last key first
            found.sort(key=attrgetter(name.removeprefix("-")), reverse=name.startswith("-"))
        return found[:limit]

    def tenants(self, selection: Selection) -> builtins.list[str]:
        found = {job.tenant for job in self._jobs.values() if selection.matches(job)}
        return sorted(tenant for tenant in found if tenant is not None)

    def with_keys(self, keys: Iterable[str]) -> dict[str, Job]:
        wanted = set(keys)
        return {
            job.idempotency_key: job
            for job in self._jobs.values()
            if job.idempotency_key is not None and job.idempotency_key in wanted
        }

    def reserve_outputs(self, output_uris: Iterable[str]) -> None:
        pass  # the store's lock already runs one transaction at a time

    def events_of(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        return builtins.list(self._events[job_id])

    def insert(self, creation: Transition) -> Job:
        job = Job(**{**_EMPTY_JOB, **_stored_values(creation.values)})
        if job.id in self._jobs:
            raise duplicate_id(job.id)
        self._jobs[job.id] = job
        self._events[job.id] = []
        self._undo += [lambda: self._jobs.pop(job.id), lambda: self._events.pop(job.id)]
        self.record(job.id, creation)
        return job

    def update(self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or not guard.matches(job):
            return None
        written = self._jobs[job_id] = replace(job, **_stored_values(values))
        self._undo.append(lambda: self._jobs.__setitem__(job_id, job))
        if written.status.is_finished and not job.status.is_finished:
            self.finished.append(job_id)
        return written

    def record(self, job_id: uuid.UUID, transition: Transition) -> None:
        history = self._events[job_id]
        event = _stored_values(transition.event)
        history.append(JobEvent(id=next(self._event_ids), job_id=job_id, **event))
        self._undo.append(history.pop)
