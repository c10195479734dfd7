"""Fixtures for tests against real services: PostgreSQL, Redis and an S3 server (moto) over HTTP.

PostgreSQL and Redis are required, not optional: when one is down, the fixtures that need it fail
with the reason instead of skipping (`.ci/run` starts both). Where they are:

* `TOONQ_TEST_POSTGRES_URL`: an admin connection used to create and drop one database per use
  (default `postgresql://postgres@127.0.0.1:5432/postgres`);
* `TOONQ_TEST_REDIS_URL`: a Redis database the tests may flush (default
  `redis://127.0.0.1:6379/15`, away from the default database 0).

Fixtures, by service:

* PostgreSQL: `pg_server`, `postgres_url`, `fresh_postgres_url`, `migrated_pg_url`, `pg_engine`,
  `pg_sessions`, `pg_jobstore`.
* The job store contract: `jobstore`, each test once on PostgreSQL and once in memory.
* SQLite: `sqlite_url`, `sqlite_jobstore`.
* Redis: `redis_url`.
* S3: `aws_env`, `s3_server`, `s3_client`, `s3_bucket`, `refused_endpoint`.
* Time: `clock`, which every job store fixture uses.
* Servers of the session's own, which tests may kill and restart: `private_postgres`,
  `private_redis` (skipped only where PostgreSQL's or Redis's programs are not installed).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tests.servers import MotoS3, PrivatePostgres, PrivateRedis, ServerUnavailableError, free_port
from toonq.shared.db.engine import create_db_engine, migrate, session_factory
from toonq.shared.job import utc_now
from toonq.shared.jobstore import InMemoryJobStore, JobStore, SqlJobStore
from toonq.shared.settings import normalize_database_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

POSTGRES_ADMIN_URL = normalize_database_url(
    os.environ.get("TOONQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
REDIS_URL = os.environ.get("TOONQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# --- Time -----------------------------------------------------------------------------------------


class ManualClock:
    """The real UTC time plus an offset that tests move forward, e.g. to let a lease expire
    without sleeping. Time keeps flowing, so code that reads `datetime.now()` stays consistent."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    """The clock of every job store fixture."""
    return ManualClock()


# --- PostgreSQL -----------------------------------------------------------------------------------


class PostgresServer:
    """Creates uniquely named databases on the test server and drops them again."""

    def __init__(self, admin_url: str) -> None:
        self._admin_url = make_url(admin_url)
        self._admin = create_engine(
            self._admin_url,
            isolation_level="AUTOCOMMIT",  # CREATE/DROP DATABASE cannot run in a transaction
            connect_args={"connect_timeout": 5},
        )

    def check(self) -> None:
        try:
            with self._admin.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as exc:
            pytest.fail(
                f"the tests need PostgreSQL at {self._admin_url!r} (set TOONQ_TEST_POSTGRES_URL "
                f"or start it, as .ci/run does): {exc.orig}",
                pytrace=False,
            )

    def create_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        name = f"toonq_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return self._admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as connection:
            # FORCE: an engine a test forgot to dispose must not keep the database alive.
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def dispose(self) -> None:
        self._admin.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server; fails every test that needs it when it is unreachable."""
    server = PostgresServer(POSTGRES_ADMIN_URL)
    server.check()
    yield server
    server.dispose()


@pytest.fixture(scope="session")
def postgres_url(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of an empty, uniquely named database shared by the session; dropped at the end.
    Only ever migrated forward (by `migrated_pg_url`): use `fresh_postgres_url` to experiment."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def fresh_postgres_url(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of an empty database of this test's own, e.g. to migrate up and down."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="session")
def migrated_pg_url(postgres_url: str) -> str:
    """`postgres_url`, migrated to the latest revision."""
    migrate(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def pg_engine(migrated_pg_url: str) -> Iterator[Engine]:
    engine = create_db_engine(migrated_pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_sessions(pg_engine: Engine) -> sessionmaker[Session]:
    """Sessions on the migrated database, emptied of jobs and events before the test."""
    with pg_engine.begin() as connection:
        connection.execute(text("TRUNCATE jobs, job_events RESTART IDENTITY"))
    return session_factory(pg_engine)


@pytest.fixture
def pg_jobstore(pg_sessions: sessionmaker[Session], clock: ManualClock) -> SqlJobStore:
    """A job store on an empty, migrated PostgreSQL database, reading time from `clock`."""
    return SqlJobStore(pg_sessions, clock=clock)


@pytest.fixture(params=["postgres", "memory"])
def jobstore(request: pytest.FixtureRequest, clock: ManualClock) -> JobStore:
    """An empty job store reading time from `clock`: the test runs once on PostgreSQL and once
    on the in-memory store, which must behave the same."""
    if request.param == "memory":
        return InMemoryJobStore(clock=clock)
    store: SqlJobStore = request.getfixturevalue("pg_jobstore")
    return store


# --- SQLite ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a SQLite file (not created yet) in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'toonq.db'}"


@pytest.fixture
def sqlite_jobstore(sqlite_url: str, clock: ManualClock) -> Iterator[JobStore]:
    """A job store on a migrated SQLite file, as in the embedded setup."""
    migrate(sqlite_url)
    engine = create_db_engine(sqlite_url)
    yield SqlJobStore(session_factory(engine), clock=clock)
    engine.dispose()


# --- Redis ----------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of a Redis database of its own (number 15 by default), flushed before the test."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(
            f"the tests need Redis at {REDIS_URL} (set TOONQ_TEST_REDIS_URL or start it, as "
            f".ci/run does): {exc}",
            pytrace=False,
        )
    yield REDIS_URL
    client.close()


# --- S3 (moto) ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy AWS credentials for the session, so that no test can reach a real account."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        # Never read the developer's ~/.aws files.
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        yield


@pytest.fixture(scope="session")
def s3_server(aws_env: None) -> Iterator[str]:
    """The endpoint URL (http://127.0.0.1:PORT) of a moto S3 server running in a subprocess for
    the session: boto3 talks real HTTP to it, so timeouts and retries behave as in production."""
    with MotoS3() as server:
        yield server.url


@pytest.fixture(scope="session")
def s3_client(s3_server: str) -> S3Client:
    """A plain boto3 client on the moto server, to arrange and inspect test data."""
    return boto3.client("s3", endpoint_url=s3_server)


@pytest.fixture
def s3_bucket(s3_client: S3Client) -> str:
    """The name of a new, empty bucket on the moto server."""
    name = f"toonq-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def refused_endpoint() -> str:
    """An S3 endpoint where nothing listens (its port was free a moment ago): any request fails
    as storage_unavailable."""
    return f"http://127.0.0.1:{free_port()}"


# --- Private servers ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the session's own, on a free port; a test that stops it must
    start it again."""
    try:
        server = PrivatePostgres()
    except ServerUnavailableError as exc:
        pytest.skip(f"no private PostgreSQL: {exc}")
    with server:
        yield server


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis server of the session's own, on a free port, without persistence; a test that
    kills it must start it again."""
    try:
        server = PrivateRedis()
    except ServerUnavailableError as exc:
        pytest.skip(f"no private Redis: {exc}")
    with server:
        yield server
