"""A throw-away toonq deployment for end-to-end benchmarks: a fresh PostgreSQL database, a Redis
queue of its own, an S3 endpoint (a moto server it starts, unless one is given) and real
`toonq worker` processes.

Where the services are: `TOONQ_BENCH_POSTGRES_URL` (an admin connection, default the local
server), `TOONQ_BENCH_REDIS_URL` (default the local server, database 0) and
`TOONQ_BENCH_S3_ENDPOINT_URL` (default: start moto). Everything it creates is removed on exit.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import boto3
import redis
from sqlalchemy import Engine, bindparam, create_engine, text

from toonq.producer import SubmitRequest, ToonqClient
from toonq.shared.db.engine import migrate
from toonq.shared.errors import ToonqError
from toonq.shared.queue import queue_lists
from toonq.shared.settings import Settings, normalize_database_url
from toonq.shared.storage import ObjectStore

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
_START_TIMEOUT_S = 60.0


class BenchUnavailableError(ToonqError):
    """A service the benchmark needs cannot be reached."""

    code = "bench_unavailable"


@dataclass(frozen=True)
class Throughput:
    jobs: int
    succeeded: int
    #: Completions per second in the steady state (see `steady_rate`).
    jobs_per_s: float
    wall_s: float
    median_stage_ms: dict[str, float]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Deployment:
    """Use as a context manager; `worker(...)` runs a worker for a `with` block."""

    def __init__(self, *, use_s3: bool = True) -> None:
        self.admin_url = normalize_database_url(
            os.environ.get("TOONQ_BENCH_POSTGRES_URL")
            or "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        self.redis_url = os.environ.get("TOONQ_BENCH_REDIS_URL") or "redis://127.0.0.1:6379/0"
        self.s3_endpoint = os.environ.get("TOONQ_BENCH_S3_ENDPOINT_URL")
        self.use_s3 = use_s3
        self.queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.bucket = f"toonq-bench-{uuid.uuid4().hex[:8]}"
        self._home = Path(tempfile.mkdtemp(prefix="toonq-bench-"))
        self._database = f"toonq_bench_{uuid.uuid4().hex[:8]}"
        self._moto: subprocess.Popen[bytes] | None = None
        self._saved_environ: dict[str, str] | None = None
        self._jobs_db: Engine | None = None
        self.env: dict[str, str] = {}
        self.client: ToonqClient | None = None

    # --- Setting up and tearing down ---------------------------------------------------

    def __enter__(self) -> Deployment:
        try:
            self._create_database()
            redis.Redis.from_url(self.redis_url, socket_timeout=5).ping()
            if self.use_s3 and self.s3_endpoint is None:
                # This process talks to the local server too: with throw-away credentials.
                self._saved_environ = dict(os.environ)
                os.environ.update(_dummy_aws())
                self.s3_endpoint = self._start_moto()
            if self.use_s3:
                boto3.client("s3", endpoint_url=self.s3_endpoint).create_bucket(Bucket=self.bucket)
        except Exception as exc:
            self.__exit__(None, None, None)
            raise BenchUnavailableError(f"cannot set up the benchmark deployment: {exc}") from exc
        self.env = self._worker_env()
        self.client = ToonqClient(Settings.from_env(self.env), actor="bench")
        return self

    def __exit__(self, *_: object) -> None:
        if self.client is not None:
            self.client.close()
        if self._jobs_db is not None:
            self._jobs_db.dispose()
        connection = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        with suppress(redis.RedisError):
            connection.delete(*queue_lists(self.queue))
        if self._moto is not None:
            self._moto.terminate()
            self._moto.wait(timeout=10)
        if self._saved_environ is not None:
            os.environ.clear()
            os.environ.update(self._saved_environ)
        self._drop_database()

    def _admin(self) -> Engine:
        return create_engine(self.admin_url, isolation_level="AUTOCOMMIT")

    @property
    def database_url(self) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{self._database}"

    def _create_database(self) -> None:
        engine = self._admin()
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{self._database}"'))
        finally:
            engine.dispose()
        migrate(self.database_url)
        self._jobs_db = create_engine(self.database_url)

    def _drop_database(self) -> None:
        engine = self._admin()
        try:
            with engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)'))
        except Exception:
            pass
        finally:
            engine.dispose()

    def _start_moto(self) -> str:
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        log = (self._home / "moto.log").open("wb")
        self._moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._moto.poll() is not None:
                raise RuntimeError(
                    "the moto S3 server exited at start (is moto[server] installed?)"
                )
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    return endpoint
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(f"the moto S3 server did not answer within {_START_TIMEOUT_S} s")

    def _worker_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "TOONQ_HOME": str(self._home),
            "TOONQ_DATABASE_URL": self.database_url,
            "TOONQ_BROKER_URL": self.redis_url,
            "TOONQ_QUEUE": self.queue,
            "TOONQ_DEVICE": "cpu",
            "TOONQ_LOG_FORMAT": "json",
            "TOONQ_LOG_LEVEL": "WARNING",
            "TOONQ_SWEEP_INTERVAL_S": "0",
        }
        if self.use_s3:
            assert self.s3_endpoint is not None
            env |= {
                "TOONQ_S3_ENDPOINT_URL": self.s3_endpoint,
                "TOONQ_OUTPUT_PREFIX": f"s3://{self.bucket}/out",
            }
        return env

    # --- Running jobs --------------------------------------------------------------------

    @property
    def objects(self) -> ObjectStore:
        assert self.client is not None, "use the deployment as a context manager"
        return self.client.objects

    def input_uri(self, name: str) -> str:
        if self.use_s3:
            return f"s3://{self.bucket}/in/{name}"
        return (self._home / "inputs" / name).as_uri()

    def put_input(self, name: str, data: bytes) -> str:
        uri = self.input_uri(name)
        if not self.use_s3:
            (self._home / "inputs").mkdir(exist_ok=True)
        self.objects.put(uri, data, content_type="image/png")
        return uri

    def submit(self, uris: Sequence[str], *, resolution: int | None = None) -> list[uuid.UUID]:
        assert self.client is not None, "use the deployment as a context manager"
        jobs = self.client.submit_many(
            SubmitRequest(input_uri=uri, resolution=resolution) for uri in uris
        )
        return [job.id for job in jobs]

    @contextmanager
    def worker(self, **env: str) -> Iterator[subprocess.Popen[bytes]]:
        """A `toonq worker` process with `env` on top of the deployment's, ready to work."""
        log_path = self._home / f"worker-{uuid.uuid4().hex[:6]}.log"
        port = _free_port()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "toonq.producer.cli", "worker"],
                env=self.env | {"TOONQ_METRICS_PORT": str(port)} | env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(process, log_path, f"http://127.0.0.1:{port}/readyz")
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait_ready(self, process: subprocess.Popen[bytes], log_path: Path, probe: str) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited at start:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(probe, timeout=1):
                    return  # 200: the model is warm and the consumer about to start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError("the worker did not become ready")

    def wait_final(
        self, job_ids: Sequence[uuid.UUID], *, timeout_s: float, fill: int = 0, drain: int = 0
    ) -> Throughput:
        """Wait until every job is final, then measure the run from the jobs' own records;
        `fill` and `drain` are passed to `steady_rate`."""
        started = time.monotonic()
        # A count while waiting: the poll must cost the measured system next to nothing.
        while self._unfinished() > 0:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"jobs still running after {timeout_s} s")
            time.sleep(0.25)
        rows = self._rows({str(job_id) for job_id in job_ids})
        finished = sorted(row[2] for row in rows if row[1] == "succeeded")
        return Throughput(
            jobs=len(rows),
            succeeded=len(finished),
            jobs_per_s=steady_rate(finished, fill=fill, drain=drain),
            wall_s=round(time.monotonic() - started, 2),
            median_stage_ms=_median_stages([row[3] for row in rows if row[3]]),
        )

    def _unfinished(self) -> int:
        assert self._jobs_db is not None, "use the deployment as a context manager"
        with self._jobs_db.connect() as connection:
            count = connection.execute(
                text("SELECT count(*) FROM jobs WHERE status NOT IN :final").bindparams(
                    bindparam("final", expanding=True)
                ),
                {"final": sorted(FINAL_STATUSES)},
            ).scalar_one()
        return int(count)

    def _rows(self, ids: set[str]) -> list[tuple[str, str, datetime, dict[str, float] | None]]:
        assert self._jobs_db is not None, "use the deployment as a context manager"
        with self._jobs_db.connect() as connection:
            rows = connection.execute(
                text("SELECT id, status, finished_at, timings FROM jobs")
            ).all()
        return [
            (str(row[0]), row[1], row[2], _timings(row[3])) for row in rows if str(row[0]) in ids
        ]


def _timings(raw: object) -> dict[str, float] | None:
    if isinstance(raw, str):
        raw = json.loads(raw)
    return raw if isinstance(raw, dict) else None


def steady_rate(finished: Sequence[datetime], *, fill: int, drain: int) -> float:
    """Completions per second while the pipeline is full: the slope of a least-squares line
    through (completion time, count), leaving out the first `fill` completions (the pipeline
    filling up) and the last `drain` (the queue is empty, the pipeline drains). A fit rather
    than first-to-last, because batched work completes in steps of a batch."""
    window = sorted(finished)[fill : len(finished) - drain]
    if len(window) < 3:
        raise ValueError(f"too few completions to measure a rate: {len(window)}")
    seconds = [(t - window[0]).total_seconds() for t in window]
    slope, _ = statistics.linear_regression(seconds, range(len(window)))
    return slope


def _median_stages(timings: Sequence[dict[str, float]]) -> dict[str, float]:
    stages = {stage for t in timings for stage in t}
    return {
        stage: round(statistics.median(t[stage] for t in timings if stage in t), 1)
        for stage in sorted(stages)
    }


def _dummy_aws() -> dict[str, str]:
    # The local S3 server accepts any credentials; never use the operator's real ones.
    return {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
