"""A toonq deployment of real processes that tests break on purpose, and the audit that says
whether anything was lost or done twice.

A `Cluster` has its own PostgreSQL database, Redis queue and S3 bucket (behind a
`FaultyS3Proxy`), starts and kills `toonq worker` processes, submits through the producer API
and reads the outcome straight from the `jobs` and `job_events` tables, the source of truth.
Workers run the tiny random model on CPU at 32x32, fast enough for hundreds of jobs.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from tests.conftest import PostgresServer
from tests.support import FaultyS3Proxy, WorkerProcess, base_env, png_bytes
from toonq.producer import SubmitRequest, ToonqClient
from toonq.shared.db.engine import create_db_engine, migrate
from toonq.shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: Distinct input pictures; jobs cycle through them.
INPUT_VARIANTS = 16


def cluster_env(
    *, database_url: str, broker_url: str, s3_endpoint: str, bucket: str, **overrides: str
) -> dict[str, str]:
    """The environment of a cluster's workers and clients: fast model, quick retries."""
    return base_env(
        TOONQ_DATABASE_URL=database_url,
        TOONQ_BROKER_URL=broker_url,
        TOONQ_QUEUE=f"rel-{uuid.uuid4().hex[:8]}",
        TOONQ_S3_ENDPOINT_URL=s3_endpoint,
        TOONQ_S3_MAX_ATTEMPTS="1",  # every injected S3 fault reaches the job's retry logic
        TOONQ_OUTPUT_PREFIX=f"s3://{bucket}/out",
        TOONQ_MODEL="random:tiny",
        TOONQ_RESOLUTION="32",
        TOONQ_DEVICE="cpu",
        TOONQ_RETRY_BACKOFF_S="0.2",
        TOONQ_RETRY_BACKOFF_MAX_S="1",
        TOONQ_LOG_FORMAT="json",
        # Several workers share a few cores: one thread each keeps them from thrashing.
        OMP_NUM_THREADS="1",
        **overrides,
    )


@dataclass(frozen=True)
class JobRecord:
    """A job as the audit sees it."""

    id: uuid.UUID
    status: str
    error_code: str | None
    output_uri: str
    worker: str | None
    attempts: int
    finished_at: datetime | None
    enqueued_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class Audit:
    """What became of every job of a cluster."""

    jobs: dict[uuid.UUID, JobRecord]
    events: dict[uuid.UUID, Counter[str]]
    #: Jobs not in a final state.
    lost: list[uuid.UUID]
    #: Jobs with more than one `succeeded` event, or whose output was written with two
    #: different contents (two attempts that disagree).
    duplicated: list[uuid.UUID]
    #: Succeeded jobs without their output object.
    missing_outputs: list[uuid.UUID]

    @property
    def statuses(self) -> Counter[str]:
        return Counter(job.status for job in self.jobs.values())

    @property
    def error_codes(self) -> Counter[str]:
        return Counter(job.error_code for job in self.jobs.values() if job.error_code)

    def event_count(self, kind: str) -> int:
        return sum(kinds[kind] for kinds in self.events.values())

    def assert_sound(self, expected_jobs: int) -> None:
        """Every job final, none done twice, every success with its output, and the counts add
        up: one `succeeded` event per succeeded job and nothing else."""
        assert len(self.jobs) == expected_jobs, f"{len(self.jobs)} jobs, not {expected_jobs}"
        assert not self.lost, f"not final: {[str(self.jobs[i].status) for i in self.lost]}"
        assert not self.duplicated, f"done twice: {self.duplicated}"
        assert not self.missing_outputs, f"succeeded without output: {self.missing_outputs}"
        assert sum(self.statuses[status] for status in FINAL_STATUSES) == expected_jobs
        assert self.event_count("succeeded") == self.statuses["succeeded"]


class Cluster:
    """Workers, a client and a fault-injecting S3 proxy around one database and one queue."""

    def __init__(
        self,
        *,
        database_url: str,
        broker_url: str,
        proxy: FaultyS3Proxy,
        s3: S3Client,
        bucket: str,
        log_dir: Path,
        env: Mapping[str, str],
    ) -> None:
        self.proxy = proxy
        self.s3 = s3
        self.bucket = bucket
        self.log_dir = log_dir
        self.env = cluster_env(
            database_url=database_url,
            broker_url=broker_url,
            s3_endpoint=proxy.endpoint,
            bucket=bucket,
            **env,
        )
        #: Every worker started, in order, killed ones included.
        self.workers: list[WorkerProcess] = []
        self._by_name: dict[str, WorkerProcess] = {}
        #: The cluster's database, for tests that read or lock it behind toonq's back.
        self.database: Engine = create_db_engine(database_url)

    @cached_property
    def client(self) -> ToonqClient:
        return ToonqClient(Settings.from_env(self.env), actor="test")

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=10)
        if "client" in self.__dict__:
            self.client.close()
        self.database.dispose()

    # --- workers --------------------------------------------------------------------------------

    def start_worker(self, name: str, **overrides: str) -> WorkerProcess:
        """Start `toonq worker` named `name` (not waiting for it to be ready)."""
        env = self.env | {"TOONQ_WORKER_NAME": name} | overrides
        worker = WorkerProcess(env, self.log_dir / f"{name}.log")
        self.workers.append(worker)
        self._by_name[name] = worker
        return worker

    def worker(self, name: str) -> WorkerProcess:
        """The worker last started under `name`."""
        return self._by_name[name]

    def start_workers(self, *names: str) -> list[WorkerProcess]:
        """Start workers side by side and wait until each consumes."""
        workers = [self.start_worker(name) for name in names]
        for worker in workers:
            worker.wait_ready()
        return workers

    # --- jobs -----------------------------------------------------------------------------------

    def put_input(self, name: str, data: bytes | None = None) -> str:
        key = f"in/{name}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data or png_bytes((64, 64)))
        return f"s3://{self.bucket}/{key}"

    def put_inputs(self) -> list[str]:
        """A few distinct small pictures for many jobs to share."""
        return [
            self.put_input(f"variant-{i}.png", png_bytes((48 + i, 64 - i)))
            for i in range(INPUT_VARIANTS)
        ]

    def submit(self, uris: Sequence[str]) -> list[uuid.UUID]:
        jobs = self.client.submit_many([SubmitRequest(uri) for uri in uris])
        return [job.id for job in jobs]

    def _query(self, sql: str, **params: Any) -> list[Any]:
        """Rows of `sql`, retried while the database is down (the tests restart it)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with self.database.connect() as connection:
                    return list(connection.execute(text(sql), params))
            except SQLAlchemyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def records(self) -> dict[uuid.UUID, JobRecord]:
        rows = self._query(
            "SELECT id, status, error_code, output_uri, worker, attempts, finished_at,"
            " enqueued_at, updated_at FROM jobs"
        )
        return {row.id: JobRecord(*row) for row in rows}

    def statuses(self) -> Counter[str]:
        rows = self._query("SELECT status, count(*) AS n FROM jobs GROUP BY status")
        return Counter({row.status: row.n for row in rows})

    def running_on(self, worker: str) -> list[uuid.UUID]:
        rows = self._query(
            "SELECT id FROM jobs WHERE status = 'running' AND worker = :worker", worker=worker
        )
        return [row.id for row in rows]

    def wait_for(
        self, predicate: Callable[[dict[uuid.UUID, JobRecord]], bool], *, timeout: float
    ) -> dict[uuid.UUID, JobRecord]:
        """Poll the jobs until `predicate` holds; AssertionError with their states if not."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                states = Counter(record.status for record in records.values())
                raise AssertionError(f"not reached within {timeout} s; jobs: {dict(states)}")
            time.sleep(0.1)

    def wait_final(self, *, timeout: float) -> dict[uuid.UUID, JobRecord]:
        return self.wait_for(
            lambda records: all(r.status in FINAL_STATUSES for r in records.values()),
            timeout=timeout,
        )

    def event_kinds(self, job_id: uuid.UUID) -> list[str]:
        rows = self._query(
            "SELECT kind FROM job_events WHERE job_id = :job_id ORDER BY at, id", job_id=job_id
        )
        return [row.kind for row in rows]

    def audit(self) -> Audit:
        jobs = self.records()
        events: dict[uuid.UUID, Counter[str]] = {job_id: Counter() for job_id in jobs}
        for row in self._query("SELECT job_id, kind, count(*) AS n FROM job_events GROUP BY 1, 2"):
            events[row.job_id][row.kind] = row.n
        outputs = self._output_keys()
        duplicated = [
            job.id
            for job in jobs.values()
            if events[job.id]["succeeded"] > 1 or len(set(self.proxy.writes(job.output_uri))) > 1
        ]
        return Audit(
            jobs=jobs,
            events=events,
            lost=[job.id for job in jobs.values() if job.status not in FINAL_STATUSES],
            duplicated=duplicated,
            missing_outputs=[
                job.id
                for job in jobs.values()
                if job.status == "succeeded" and job.output_uri not in outputs
            ],
        )

    def _output_keys(self) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="out/")
        keys = (item["Key"] for page in pages for item in page.get("Contents", []))
        return {f"s3://{self.bucket}/{key}" for key in keys}


@contextmanager
def running_cluster(
    *,
    postgres_admin_url: str,
    broker_url: str,
    s3_endpoint: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """A cluster on a new database of the PostgreSQL server at `postgres_admin_url`, the Redis
    database at `broker_url` (flushed first) and a new bucket; its workers are stopped and the
    database dropped on exit."""
    redis.Redis.from_url(broker_url).flushdb()
    server = PostgresServer(postgres_admin_url)
    database_url = server.create_database()
    # Drop the admin connection now: a test may restart the server before the database is
    # dropped, and a pooled connection would not survive that.
    server.dispose()
    migrate(database_url)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"toonq-rel-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    try:
        with FaultyS3Proxy(s3_endpoint).running() as proxy:
            cluster = Cluster(
                database_url=database_url,
                broker_url=broker_url,
                proxy=proxy,
                s3=s3,
                bucket=bucket,
                log_dir=log_dir,
                env=env or {},
            )
            try:
                yield cluster
            finally:
                cluster.close()
    finally:
        server.drop_database(database_url)
        server.dispose()
