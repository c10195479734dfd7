"""Fixtures for tests against real services: PostgreSQL, Redis and an S3 server (moto) over HTTP.

PostgreSQL and Redis are required, not optional: when one is down, the fixtures that need it fail
with the reason instead of skipping (`.ci/run` starts both). Where they are:

* `TOONQ_TEST_POSTGRES_URL`: an admin connection used to create and drop one database per use
  (default `postgresql://postgres@127.0.0.1:5432/postgres`);
* `TOONQ_TEST_REDIS_URL`: a Redis database for the tests (default `redis://127.0.0.1:6379/15`,
  away from the default database 0);
* `TOONQ_TEST_E2E_REDIS_URL`: another, for the modules running workers (default
  `redis://127.0.0.1:6379/14`).

Others may use those databases too: the tests flush nothing. Each test or cluster uses queues
named for it alone and deletes only those queues' keys (`toonq.worker.harness.broker`).

Fixtures, by service:

* PostgreSQL: `pg_server`, `postgres_url`, `fresh_postgres_url`, `migrated_pg_url`, `pg_engine`,
  `pg_database`, `pg_jobstore`.
* The job store contract: `jobstore`, each test once on PostgreSQL and once in memory.
* SQLite: `sqlite_url`, `sqlite_jobstore`.
* Redis: `redis_url`, `redis_queue`.
* S3: `aws_env`, `s3_server`, `s3_client`, `s3_bucket`, `refused_endpoint`.
* Any server that accepts connections and never answers: `silent_server`.
* Time: `clock`, which every job store fixture uses.
* Servers of the session's own, which tests may kill and restart: `private_postgres`,
  `private_redis` (skipped only where PostgreSQL's or Redis's programs are not installed).
* A cluster of real worker processes for a module: `start_cluster`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import boto3
import pytest
import redis
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from tests.cluster import Cluster, running_cluster
from tests.servers import PrivatePostgres, PrivateRedis, ServerUnavailableError, SilentServer
from toonq.shared.db.engine import create_db_engine, migrate
from toonq.shared.job import utc_now
from toonq.shared.jobstore import InMemoryJobStore, JobStore, SqlJobStore
from toonq.shared.settings import Settings
from toonq.worker.harness.broker import delete_queue
from toonq.worker.harness.moto import MotoServer, local_s3_credentials
from toonq.worker.harness.network import free_port
from toonq.worker.harness.postgres import PostgresServer
from toonq.worker.harness.server import ManagedServer
from toonq.worker.health import Health, HealthServer, serve
from toonq.worker.metrics import WorkerMetrics

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

POSTGRES_ADMIN_URL = os.environ.get(
    "TOONQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TOONQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REDIS_E2E_URL = os.environ.get("TOONQ_TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/14")


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


@contextmanager
def _required(
    service: str, url: str, variable: str, unreachable: type[Exception]
) -> Iterator[None]:
    """Fail the test, with the reason, when the block finds the service unreachable."""
    try:
        yield
    except unreachable as exc:
        pytest.fail(
            f"the tests need {service} at {url!r} (set {variable} or start it, as .ci/run "
            f"does): {exc}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server; fails every test that needs it when it is unreachable."""
    server = PostgresServer(POSTGRES_ADMIN_URL, prefix="toonq_test")
    with _required("PostgreSQL", POSTGRES_ADMIN_URL, "TOONQ_TEST_POSTGRES_URL", OperationalError):
        server.ping()
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
def pg_database(pg_engine: Engine) -> Engine:
    """The migrated database, emptied of jobs and events before the test."""
    with pg_engine.begin() as connection:
        connection.execute(text("TRUNCATE jobs, job_events RESTART IDENTITY"))
    return pg_engine


@pytest.fixture
def pg_jobstore(pg_database: Engine, clock: ManualClock) -> SqlJobStore:
    """A job store on an empty, migrated PostgreSQL database, reading time from `clock`. Read
    once here: the store measures `clock`'s offset to the database's time when first read, and
    a test may move `clock` on from the start."""
    store = SqlJobStore(pg_database, clock=clock)
    store.now()
    return store


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
    yield SqlJobStore(engine, clock=clock)
    engine.dispose()


# --- Redis ----------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of the tests' Redis database (number 15 by default), which others may share: a
    test works on queues of its own (`redis_queue`)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    with _required("Redis", REDIS_URL, "TOONQ_TEST_REDIS_URL", redis.ConnectionError):
        client.ping()
    yield REDIS_URL
    client.close()


@pytest.fixture
def redis_queue(redis_url: str) -> Iterator[str]:
    """A queue name of the test's own on `redis_url`; its lists, kombu's keys for it and its
    unacknowledged messages are deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_queue(redis_url, name)


# --- S3 (moto) ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy AWS credentials for the session, so that no test can reach a real account."""
    with local_s3_credentials():
        yield


@pytest.fixture(scope="session")
def s3_server(aws_env: None) -> Iterator[str]:
    """The endpoint URL (http://127.0.0.1:PORT) of a moto S3 server running in a subprocess for
    the session: boto3 talks real HTTP to it, so timeouts and retries behave as in production."""
    with MotoServer() as server:
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


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    """A server that accepts connections and never answers (`.address` is its host:port): an
    S3 endpoint or a Redis behind a dead link."""
    with SilentServer() as server:
        yield server


# --- Private servers ------------------------------------------------------------------------------


Server = TypeVar("Server", bound=ManagedServer)


def _private(server: Callable[[], Server], program: str) -> Iterator[Server]:
    try:
        running = server()
    except ServerUnavailableError as exc:
        pytest.skip(f"no private {program}: {exc}")
    with running:
        yield running


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the session's own, on a free port; a test that stops it must
    start it again."""
    yield from _private(PrivatePostgres, "PostgreSQL")


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis server of the session's own, on a free port, without persistence; a test that
    kills it must start it again."""
    yield from _private(PrivateRedis, "Redis")


# --- Clusters -------------------------------------------------------------------------------------

StartCluster = Callable[..., Cluster]


@pytest.fixture(scope="module")
def start_cluster(
    pg_server: PostgresServer, s3_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartCluster]:
    """`start_cluster(worker, **env)` starts a cluster with the settings `env` on the shared
    PostgreSQL and S3 servers and the Redis database at TOONQ_TEST_E2E_REDIS_URL, and
    a worker named `worker`; returns once the worker is ready. Both last until the module ends."""
    with ExitStack() as stack:

        def start(worker: str, **env: str) -> Cluster:
            cluster = stack.enter_context(
                running_cluster(
                    postgres_admin_url=pg_server.admin_url,
                    broker_url=REDIS_E2E_URL,
                    s3_endpoint=s3_server,
                    log_dir=tmp_path_factory.mktemp(worker),
                    env=env,
                )
            )
            cluster.start_workers(worker)
            return cluster

        yield start


# --- A worker's metrics and health server -------------------------------------------------------


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def worker_metrics(registry: CollectorRegistry) -> WorkerMetrics:
    return WorkerMetrics(registry)


@pytest.fixture
def health(registry: CollectorRegistry) -> Health:
    return Health(registry=registry)


@pytest.fixture
def server(health: Health, registry: CollectorRegistry) -> Iterator[HealthServer]:
    with serve(0, health, registry=registry, host="127.0.0.1") as running:
        yield running


# --- A producer on the test servers ---------------------------------------------------------------


@pytest.fixture
def producer_settings(
    migrated_pg_url: str,
    pg_database: Engine,
    redis_url: str,
    redis_queue: str,
    s3_server: str,
    s3_bucket: str,
    tmp_path: Path,
) -> Settings:
    """Settings on the migrated PostgreSQL database (emptied of jobs: `pg_database`), Redis and
    the test's S3 bucket."""
    return Settings.from_env(
        {
            "TOONQ_HOME": str(tmp_path / "home"),
            "TOONQ_DATABASE_URL": migrated_pg_url,
            "TOONQ_BROKER_URL": redis_url,
            "TOONQ_QUEUE": redis_queue,
            "TOONQ_S3_ENDPOINT_URL": s3_server,
            "TOONQ_OUTPUT_PREFIX": f"s3://{s3_bucket}/out",
        }
    )
