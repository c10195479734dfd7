"""What only the SQL job store has: SQLite's setup, and the errors of an unreachable or
unmigrated database. Its behaviour as a job store is in `test_jobstore.py`, for both stores."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, QueuePool, create_engine, text

from tests.integration.test_jobstore import LEASE_S, claim, create, make_spec, run_concurrently
from toonq.producer.watching import as_they_finish, until_finished
from toonq.shared.db.engine import create_db_engine, migrate
from toonq.shared.errors import ConfigurationError, DatabaseUnavailableError, JobNotFoundError
from toonq.shared.job import Claim, JobStatus
from toonq.shared.jobstore import JobStore, SqlJobStore

if TYPE_CHECKING:
    from tests.conftest import ManualClock


def test_sqlite_store_works_in_utc(sqlite_jobstore: JobStore, clock: ManualClock) -> None:
    job = create(sqlite_jobstore, idempotency_key="k")
    current = claim(sqlite_jobstore, job)
    assert current.job.lease_expires_at is not None
    assert current.job.lease_expires_at.tzinfo is UTC
    clock.advance(LEASE_S + 1)

    assert claim(sqlite_jobstore, job, worker="w2").attempt == 2

    assert sqlite_jobstore.create(make_spec(idempotency_key="k"), actor="p") == (
        sqlite_jobstore.get(job.id),
        False,
    )
    assert datetime.fromisoformat(sqlite_jobstore.get(job.id).to_dict()["started_at"]).tzinfo


def test_sqlite_concurrent_claims_have_one_winner(sqlite_jobstore: JobStore) -> None:
    job = create(sqlite_jobstore)

    claims = run_concurrently(4, lambda: sqlite_jobstore.claim(job.id, worker="w", lease_s=LEASE_S))

    assert sum(result is not None for result in claims) == 1


def test_sqlite_engine_is_shareable_between_processes(sqlite_url: str) -> None:
    engine = create_db_engine(sqlite_url)
    with engine.connect() as connection:
        pragma = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout")
        }
    engine.dispose()
    assert pragma["journal_mode"] == "wal"
    assert pragma["foreign_keys"] == 1
    assert isinstance(pragma["busy_timeout"], int)
    assert pragma["busy_timeout"] > 0


def test_deleting_a_job_deletes_its_events(sqlite_jobstore: JobStore, sqlite_url: str) -> None:
    job = create(sqlite_jobstore)
    engine = create_db_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM jobs"))
        assert connection.execute(text("SELECT count(*) FROM job_events")).scalar() == 0
    engine.dispose()
    with pytest.raises(JobNotFoundError):
        sqlite_jobstore.events(job.id)


def test_an_unreachable_database_is_unavailable() -> None:
    engine = create_db_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")
    store = SqlJobStore(engine)

    with pytest.raises(DatabaseUnavailableError) as raised:
        store.list()
    assert raised.value.code == "database_unavailable"
    engine.dispose()


def test_an_exhausted_connection_pool_is_unavailable(sqlite_url: str) -> None:
    migrate(sqlite_url)
    engine = create_engine(sqlite_url, pool_size=1, max_overflow=0, pool_timeout=0.01)
    store = SqlJobStore(engine)

    with engine.connect(), pytest.raises(DatabaseUnavailableError) as raised:
        store.get(uuid.uuid4())
    assert raised.value.code == "database_unavailable"
    engine.dispose()


def test_the_pool_keeps_as_many_connections_as_asked(sqlite_url: str) -> None:
    engine = create_db_engine(sqlite_url, pool_size=8)
    with ExitStack() as held:
        for _ in range(8):
            held.enter_context(engine.connect())
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedin() == 8  # none closed as an overflow connection
    engine.dispose()


@pytest.mark.parametrize("backend", ["fresh_postgres_url", "sqlite_url"])
def test_an_unmigrated_database_asks_for_migrations(
    backend: str, request: pytest.FixtureRequest
) -> None:
    engine = create_db_engine(request.getfixturevalue(backend))
    store = SqlJobStore(engine)

    with pytest.raises(ConfigurationError, match="toonq migrate"):
        store.get(uuid.uuid4())
    engine.dispose()


def test_waiters_on_sqlite_read_again_at_each_poll(sqlite_jobstore: JobStore) -> None:
    """SQLite cannot announce finishes: waiters see them at their next read."""
    jobs = [create(sqlite_jobstore) for _ in range(2)]
    watching_all = as_they_finish(sqlite_jobstore, timeout=3, poll_interval=0.05)
    heard: list[uuid.UUID] = []

    def cancel_soon() -> None:
        time.sleep(0.2)
        for job in jobs:
            sqlite_jobstore.cancel(job.id, actor="ops")

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    for job in watching_all:
        heard.append(job.id)
        if len(heard) == len(jobs):
            break
    waited = list(until_finished(sqlite_jobstore, [jobs[1].id], timeout=3, poll_interval=0.05))
    canceller.join()

    assert heard == [job.id for job in jobs]
    assert [job.status for job in waited] == [JobStatus.CANCELLED]


def ahead_by(minutes: float) -> Callable[[], datetime]:
    """A host's clock that runs `minutes` ahead."""
    return lambda: datetime.now(UTC) + timedelta(minutes=minutes)


def database_now(engine: Engine) -> datetime:
    with engine.connect() as connection:
        now: datetime = connection.execute(text("SELECT now()")).scalar_one()
    return now


def test_a_host_whose_clock_is_ahead_leases_and_recovers_in_the_database_s_time(
    pg_database: Engine,
) -> None:
    # One host's clock is right (the database's); another's runs 10 minutes ahead.
    right, ahead = SqlJobStore(pg_database), SqlJobStore(pg_database, clock=ahead_by(10))
    claim(right, create(right))
    create(right)  # not sent yet: its sender has 10 s to send it

    # Neither that lease nor that grace has run out in the database's time.
    assert ahead.due_for_recovery(unsent_grace_s=10, lost_after_s=600) == []
    # The leases it grants end a lease after the database's now.
    mine = claim(ahead, create(right))
    assert mine.job.lease_expires_at is not None
    lease_end = database_now(pg_database) + timedelta(seconds=LEASE_S)
    assert abs(mine.job.lease_expires_at - lease_end) < timedelta(seconds=2)
    assert abs(ahead.now() - database_now(pg_database)) < timedelta(seconds=2)


def test_the_sqlite_store_reads_the_database_s_time_too(sqlite_url: str) -> None:
    migrate(sqlite_url)
    engine = create_db_engine(sqlite_url)
    store = SqlJobStore(engine, clock=ahead_by(10))

    job = create(store)

    assert abs(job.created_at - datetime.now(UTC)) < timedelta(seconds=2)
    engine.dispose()


def test_a_job_another_transaction_holds_is_claimed_once_it_is_let_go(
    pg_jobstore: SqlJobStore, pg_database: Engine
) -> None:
    job = create(pg_jobstore)
    claimed: list[Claim] = []
    with pg_database.begin() as holder:
        holder.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job.id})
        claiming = threading.Thread(target=lambda: claimed.append(claim(pg_jobstore, job)))
        claiming.start()
        claiming.join(timeout=0.5)
        assert claiming.is_alive(), "the claim waits for the row, in a transaction of its own"
    claiming.join(timeout=10)

    (current,) = claimed
    assert (current.attempt, current.worker) == (1, "w1")
    assert pg_jobstore.claim(job.id, worker="w2", lease_s=LEASE_S) is None
    started = [event for event in pg_jobstore.events(job.id) if event.kind == "started"]
    assert [event.details for event in started] == [{"attempt": 1}]
    assert pg_jobstore.get(job.id).status == JobStatus.RUNNING
