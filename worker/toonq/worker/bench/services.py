"""The deployment the end-to-end sections run on: a throw-away database, queue and bucket on the
services this machine offers, with CPU workers that log only warnings (logging costs the
measured system too).

Where the services are: `TOONQ_BENCH_POSTGRES_URL` (an admin connection, default the local
server), `TOONQ_BENCH_REDIS_URL` (default the local server, database 0) and
`TOONQ_BENCH_S3_ENDPOINT_URL` (default: a moto server started for the run). Everything it
creates there is removed on exit.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from toonq.shared.errors import ToonqError
from toonq.worker.harness.deployment import Deployment
from toonq.worker.harness.moto import MotoServer, local_s3_credentials

#: How long a worker may take to load and warm its model.
WORKER_START_TIMEOUT_S = 600.0
_WORKER_ENV = {
    "TOONQ_DEVICE": "cpu",
    "TOONQ_LOG_FORMAT": "json",
    "TOONQ_LOG_LEVEL": "WARNING",
    "TOONQ_SWEEP_INTERVAL_S": "0",
}


class BenchUnavailableError(ToonqError):
    """A service the benchmark needs cannot be reached."""

    code = "bench_unavailable"


@contextmanager
def bench_deployment(*, use_s3: bool = True) -> Iterator[Deployment]:
    """A deployment on the benchmark's services; inputs and outputs in S3, else in files."""
    with ExitStack() as stack:
        try:
            s3_endpoint = os.environ.get("TOONQ_BENCH_S3_ENDPOINT_URL") if use_s3 else None
            if use_s3 and s3_endpoint is None:
                stack.enter_context(local_s3_credentials())
                s3_endpoint = stack.enter_context(MotoServer()).url
            deployment = stack.enter_context(
                Deployment(
                    postgres_admin_url=os.environ.get("TOONQ_BENCH_POSTGRES_URL")
                    or "postgresql://postgres@127.0.0.1:5432/postgres",
                    broker_url=os.environ.get("TOONQ_BENCH_REDIS_URL")
                    or "redis://127.0.0.1:6379/0",
                    s3_endpoint=s3_endpoint,
                    home=Path(tempfile.mkdtemp(prefix="toonq-bench-")),
                    name="bench",
                    env=_WORKER_ENV,
                    actor="bench",
                )
            )
        except Exception as exc:
            raise BenchUnavailableError(f"cannot set up the benchmark deployment: {exc}") from exc
        yield deployment
