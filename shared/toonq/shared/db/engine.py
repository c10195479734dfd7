"""Engines, sessions and schema migrations for PostgreSQL and the embedded SQLite database."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

import toonq.migrations
from toonq.shared.errors import ConfigurationError, DatabaseUnavailableError

SQLITE_BUSY_TIMEOUT_MS = 15_000
PG_CONNECT_TIMEOUT_S = 10
# PostgreSQL SQLSTATEs and SQLite messages of a schema that `toonq migrate` has not brought up
# to date.
_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})  # undefined table, undefined column
_SCHEMA_MESSAGES = ("no such table", "no such column")
#: A pooled connection idle for longer than this is pinged before it is handed out; one used
#: more recently is trusted, as HikariCP's `aliveBypassWindowMs` does: a worker checks out a
#: connection several times per job, and a ping each time was a round trip of its own.
PING_AFTER_IDLE_S = 0.5


def create_db_engine(
    url: str, *, pool_size: int | None = None, statement_timeout_s: float = 0
) -> Engine:
    """An engine for `url`, set up so that a worker process and the CLI can share it.

    `pool_size` is how many connections the pool keeps: as many as the threads that use the
    engine at once, or SQLAlchemy's default (5) when None. On PostgreSQL, a statement running
    longer than `statement_timeout_s` (0: no limit) is cancelled.
    """
    parsed = make_url(url)
    pool: dict[str, Any] = {} if pool_size is None else {"pool_size": pool_size}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # The embedded default lives under TOONQ_HOME, which may not exist yet.
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = _pinging_when_idle(create_engine(url, **pool))
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_sqlite_transaction)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        if statement_timeout_s:
            connect_args["options"] = f"-c statement_timeout={round(statement_timeout_s * 1000)}"
    return _pinging_when_idle(create_engine(url, connect_args=connect_args, **pool))


def _pinging_when_idle(engine: Engine) -> Engine:
    """`engine`, whose pool pings a connection idle for over `PING_AFTER_IDLE_S` before handing
    it out, and replaces it (on a new connection) if the ping fails: a database restarted since
    the connection was last used costs no caller an error."""

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at <= PING_AFTER_IDLE_S:
            return  # new, or in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"the pooled connection is gone: {exc}") from exc
        if not alive:
            raise DisconnectionError("the pooled connection is gone")

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checked_out)
    return engine


def _configure_sqlite_connection(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Take transaction control away from pysqlite, which would otherwise start transactions only
    # before DML (leaving reads and DDL outside them); `_begin_sqlite_transaction` starts them.
    dbapi_connection.isolation_level = None
    # The busy timeout makes a second process wait for a lock instead of failing with "database
    # is locked" (set first: switching to WAL takes a lock). WAL lets readers proceed while a
    # writer commits.
    dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _begin_sqlite_transaction(connection: Connection) -> None:
    # IMMEDIATE takes the write lock up front: a transaction that reads then writes cannot fail
    # half-way because another process wrote in between (SQLITE_BUSY_SNAPSHOT under WAL).
    connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Raise toonq's taxonomy instead of SQLAlchemy's for an unreachable, busy or unmigrated
    database."""
    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        if _is_schema_outdated(exc):
            raise ConfigurationError(
                f"the database schema is missing or outdated; run `toonq migrate` ({exc.orig})"
            ) from exc
        if isinstance(exc, ProgrammingError):
            raise
        raise DatabaseUnavailableError(f"database unavailable: {exc.orig}") from exc
    except InterfaceError as exc:
        raise DatabaseUnavailableError(f"database unavailable: {exc.orig}") from exc
    except PoolTimeoutError as exc:
        # Every pooled connection is in use: retry later, as for a database that is down.
        raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc


def _is_schema_outdated(exc: OperationalError | ProgrammingError) -> bool:
    if getattr(exc.orig, "sqlstate", None) in _SCHEMA_SQLSTATES:
        return True
    return any(message in str(exc.orig) for message in _SCHEMA_MESSAGES)


def alembic_config(url: str) -> Config:
    """An Alembic configuration for `url` built in code: toonq ships no alembic.ini."""
    config = Config()
    script_location = str(Path(toonq.migrations.__file__).parent)
    # Config options go through ConfigParser interpolation: escape "%".
    config.set_main_option("script_location", script_location.replace("%", "%%"))
    # Passed as an attribute, not an option, so that a password with "%" survives.
    config.attributes["url"] = url
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the schema of the database at `url` to `revision`."""
    with translate_db_errors():
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the schema of the database at `url` to `revision` ("base" drops everything)."""
    with translate_db_errors():
        command.downgrade(alembic_config(url), revision)
