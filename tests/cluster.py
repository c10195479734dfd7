"""A toonq deployment of real processes that tests break on purpose, and the audit that says
whether anything was lost or done twice.

A `Cluster` is a harness deployment (its own PostgreSQL database, Redis queue and S3 bucket, and
`toonq worker` processes) whose workers reach S3 through a `FaultyS3Proxy`. It reads the outcome
straight from the `jobs` and `job_events` tables, the source of truth. Workers run the tiny
random model on CPU at 32x32, fast enough for hundreds of jobs.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from tests.support import FaultyS3Proxy, png_bytes
from toonq.shared.job import FINISHED_STATUSES
from toonq.shared.storage import ObjectURI
from toonq.worker.harness.deployment import Deployment

#: Distinct input pictures; jobs cycle through them.
INPUT_VARIANTS = 16
#: The settings of a cluster's workers and client: fast model, quick retries.
CLUSTER_ENV = {
    "TOONQ_S3_MAX_ATTEMPTS": "1",  # every injected S3 fault reaches the job's retry logic
    "TOONQ_MODEL": "random:tiny",
    "TOONQ_RESOLUTION": "32",
    "TOONQ_DEVICE": "cpu",
    "TOONQ_RETRY_BACKOFF_S": "0.2",
    "TOONQ_RETRY_BACKOFF_MAX_S": "1",
    "TOONQ_LOG_FORMAT": "json",
    # Several workers share a few cores: one thread each keeps them from thrashing.
    "OMP_NUM_THREADS": "1",
}


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
    sent_at: datetime | None
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
        assert sum(self.statuses[status] for status in FINISHED_STATUSES) == expected_jobs
        assert self.event_count("succeeded") == self.statuses["succeeded"]


class Cluster(Deployment):
    """A deployment whose workers and client reach S3 through `proxy`."""

    def __init__(
        self,
        *,
        postgres_admin_url: str,
        broker_url: str,
        s3_endpoint: str,
        proxy: FaultyS3Proxy,
        log_dir: Path,
        env: Mapping[str, str],
    ) -> None:
        super().__init__(
            postgres_admin_url=postgres_admin_url,
            broker_url=broker_url,
            s3_endpoint=s3_endpoint,
            home=log_dir,
            name="cluster",
            env=CLUSTER_ENV | {"TOONQ_S3_ENDPOINT_URL": proxy.endpoint} | dict(env),
            actor="test",
        )
        self.proxy = proxy
        #: Straight to S3, past the proxy.
        self.s3 = boto3.client("s3", endpoint_url=s3_endpoint)

    # --- jobs -----------------------------------------------------------------------------------

    def put_input(
        self, name: str, data: bytes | None = None, *, content_type: str = "image/png"
    ) -> str:
        """Store an input straight in S3 (the proxy's faults are for the workers), by default
        a small picture; its URI."""
        uri = self.input_uri(name)
        location = ObjectURI.parse(uri)
        self.s3.put_object(
            Bucket=location.bucket,
            Key=location.key,
            Body=png_bytes((64, 64)) if data is None else data,
            ContentType=content_type,
        )
        return uri

    def put_inputs(self) -> list[str]:
        """A few distinct small pictures for many jobs to share."""
        return [
            self.put_input(f"variant-{i}.png", png_bytes((48 + i, 64 - i)))
            for i in range(INPUT_VARIANTS)
        ]

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
            " sent_at, updated_at FROM jobs"
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
        self.wait_until_final(timeout_s=timeout, poll_s=0.1)
        return self.records()

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
            lost=[job.id for job in jobs.values() if job.status not in FINISHED_STATUSES],
            duplicated=duplicated,
            missing_outputs=[
                job.id
                for job in jobs.values()
                if job.status == "succeeded" and job.output_uri not in outputs
            ],
        )

    def _output_keys(self) -> set[str]:
        prefix = ObjectURI.parse(self.client.settings.output_prefix)
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=prefix.bucket, Prefix=f"{prefix.key}/"
        )
        keys = (item["Key"] for page in pages for item in page.get("Contents", []))
        return {f"s3://{prefix.bucket}/{key}" for key in keys}


@contextmanager
def running_cluster(
    *,
    postgres_admin_url: str,
    broker_url: str,
    s3_endpoint: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """A cluster on a new database of the PostgreSQL server at `postgres_admin_url`, a queue of
    its own on the Redis database at `broker_url` and a new bucket at `s3_endpoint`; its workers
    are stopped, and its database and queue deleted, on exit."""
    with (
        FaultyS3Proxy(s3_endpoint).running() as proxy,
        Cluster(
            postgres_admin_url=postgres_admin_url,
            broker_url=broker_url,
            s3_endpoint=s3_endpoint,
            proxy=proxy,
            log_dir=log_dir,
            env=env or {},
        ) as cluster,
    ):
        yield cluster
