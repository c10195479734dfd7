"""Hearing that jobs finished, so that a waiter wakes when they do instead of polling.

A `FinishListener` blocks until some jobs finish and says which. PostgreSQL announces each job
that reaches `succeeded`, `failed` or `cancelled` on the channel `FINISHED_CHANNEL` (a trigger,
migration 0006), which `PostgresFinishListener` listens to; the in-memory store announces its
own; elsewhere (SQLite) `PollingFinishListener` only sleeps, and the waiter reads again.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, Final

import psycopg

from toonq.shared.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: The channel PostgreSQL notifies with a job's id when the job finishes.
FINISHED_CHANNEL: Final = "toonq_job_finished"
_LISTEN: Final = f"LISTEN {FINISHED_CHANNEL}"


class FinishListener(ABC):
    """Hears jobs finish from the moment it is made until it is closed."""

    #: Whether `wait` says which jobs finished (else it returns None: read them again).
    announces: ClassVar[bool] = True

    @abstractmethod
    def wait(self, timeout: float) -> frozenset[uuid.UUID] | None:
        """Block until some jobs finish, or `timeout` seconds pass: the ids of the jobs that
        finished since the last call (empty when none did), or None when this listener cannot
        tell (any job may have finished: read them again)."""

    @abstractmethod
    def close(self) -> None:
        """Stop listening."""

    def __enter__(self) -> FinishListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PollingFinishListener(FinishListener):
    """Hears nothing: each wait sleeps `timeout` and tells the waiter to read again."""

    announces = False

    def wait(self, timeout: float) -> None:
        time.sleep(max(0.0, timeout))

    def close(self) -> None:
        pass


class FinishAnnouncer:
    """Hands the ids of finished jobs to the listeners it made (the in-memory store's)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._pending: list[set[uuid.UUID]] = []

    def listener(self) -> FinishListener:
        return _AnnouncedFinishes(self)

    def announce(self, job_ids: Iterable[uuid.UUID]) -> None:
        job_ids = set(job_ids)
        if not job_ids:
            return
        with self._changed:
            for pending in self._pending:
                pending |= job_ids
            self._changed.notify_all()


class _AnnouncedFinishes(FinishListener):
    def __init__(self, announcer: FinishAnnouncer) -> None:
        self._announcer = announcer
        self._pending: set[uuid.UUID] = set()
        with announcer._changed:
            announcer._pending.append(self._pending)

    def wait(self, timeout: float) -> frozenset[uuid.UUID]:
        with self._announcer._changed:
            self._announcer._changed.wait_for(lambda: bool(self._pending), timeout)
            finished = frozenset(self._pending)
            self._pending.clear()
        return finished

    def close(self) -> None:
        with self._announcer._changed:
            self._announcer._pending.remove(self._pending)


class PostgresFinishListener(FinishListener):
    """LISTENs on a connection of its own, taken out of the engine's pool for its lifetime."""

    def __init__(self, engine: Engine) -> None:
        try:
            pooled = engine.raw_connection()
            connection = pooled.driver_connection
            assert isinstance(connection, psycopg.Connection)
            pooled.detach()  # it never goes back to the pool, listening or not
            connection.autocommit = True
            connection.execute(_LISTEN)
        except Exception as exc:
            raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc
        self._pooled = pooled
        self._connection: psycopg.Connection[object] = connection

    def wait(self, timeout: float) -> frozenset[uuid.UUID]:
        try:
            # The first notification within `timeout`, then whatever else already arrived.
            first = list(self._connection.notifies(timeout=max(0.0, timeout), stop_after=1))
            rest = list(self._connection.notifies(timeout=0)) if first else []
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc
        return frozenset(uuid.UUID(notify.payload) for notify in first + rest)

    def close(self) -> None:
        self._pooled.close()
