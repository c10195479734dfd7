"""A throw-away toonq deployment: a database of its own on a PostgreSQL server (created and
migrated here, dropped on exit), a queue of its own on a Redis server, a bucket of its own on an
S3 endpoint (or, without one, a folder), a client, and the `toonq worker` processes it starts.
Without a PostgreSQL or a Redis server it runs on the embedded defaults instead: a SQLite
database and a folder broker under its home, as `toonq demo` does.

    with Deployment(
        postgres_admin_url=..., broker_url=..., s3_endpoint=..., home=..., name="x"
    ) as deployment:
        uri = deployment.put_input("a.png", data)
        deployment.submit([uri])
        with deployment.start_worker(TOONQ_MODEL="random:tiny") as worker:
            worker.wait_ready()
            deployment.wait_until_final(timeout_s=60)
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Self

import boto3
import redis
from sqlalchemy import bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from toonq.producer import SubmitRequest, ToonqClient
from toonq.shared.db.engine import create_db_engine, migrate
from toonq.shared.job import FINISHED_STATUSES
from toonq.shared.settings import EMBEDDED_BROKER, Settings
from toonq.worker.harness.broker import delete_queue
from toonq.worker.harness.postgres import PostgresServer
from toonq.worker.harness.worker import WorkerProcess

_UNFINISHED = text("SELECT count(*) FROM jobs WHERE status NOT IN :finished").bindparams(
    bindparam("finished", expanding=True)
)


class Deployment:
    """Everything is created on construction and removed by `close` (or on leaving a `with`
    block), workers first. `name` goes into the names of the queue, the bucket and the database.
    The workers and the client run with this process's environment, then the deployment's own
    settings, then `env` (a test's settings, or another S3 endpoint for the workers to go
    through). Worker logs go to `home`, which is also their TOONQ_HOME. A `postgres_admin_url`
    or `broker_url` of None means the embedded database or broker, in `home`."""

    def __init__(
        self,
        *,
        postgres_admin_url: str | None,
        broker_url: str | None,
        s3_endpoint: str | None,
        home: Path,
        name: str,
        env: Mapping[str, str] | None = None,
        actor: str = "harness",
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.home = home
        self.broker_url = broker_url or EMBEDDED_BROKER
        self.queue = f"{name}-{suffix}"
        self._queues = [self.queue]
        self.bucket: str | None = None
        self.workers: list[WorkerProcess] = []
        self._by_name: dict[str, WorkerProcess] = {}
        self._teardown = ExitStack()
        try:
            if postgres_admin_url is None:
                self.database_url = f"sqlite:///{home / 'toonq.db'}"
                migrate(self.database_url)
            else:
                self.database_url = self._create_database(
                    postgres_admin_url, prefix=f"toonq_{name.replace('-', '_')}"
                )
            if broker_url is not None:
                broker = redis.Redis.from_url(broker_url, socket_timeout=5)
                with broker:
                    broker.ping()
                self._teardown.callback(self._delete_queues)
            own = {
                "TOONQ_HOME": str(home),
                "TOONQ_DATABASE_URL": self.database_url,
                "TOONQ_BROKER_URL": self.broker_url,
                "TOONQ_QUEUE": self.queue,
            }
            if s3_endpoint is None:
                # Inputs and outputs in files under `home`, which every process here shares.
                own["TOONQ_ALLOW_FILE_URIS"] = "1"
            else:
                self.bucket = f"toonq-{name}-{suffix}"
                boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=self.bucket)
                own |= {
                    "TOONQ_S3_ENDPOINT_URL": s3_endpoint,
                    "TOONQ_OUTPUT_PREFIX": f"s3://{self.bucket}/out",
                }
            #: The environment of the deployment's workers and client.
            self.env: dict[str, str] = {**os.environ, **own, **(env or {})}
            #: The deployment's database, for reading the jobs behind toonq's back.
            self.database = create_db_engine(self.database_url)
            self._teardown.callback(self.database.dispose)
            self.client = ToonqClient(Settings.from_env(self.env), actor=actor)
            self._teardown.callback(self.client.close)
            self._teardown.callback(self._stop_workers)
        except BaseException:
            self._teardown.close()
            raise

    def _create_database(self, admin_url: str, *, prefix: str) -> str:
        server = PostgresServer(admin_url, prefix=prefix)
        url = server.create_database()
        # No admin connection is kept open meanwhile: a test may restart the server.
        server.dispose()
        self._teardown.callback(server.dispose)
        self._teardown.callback(server.drop_database, url)
        migrate(url)
        return url

    def new_queue(self, name: str) -> str:
        """Another queue of the deployment's own, for workers or a client that must not share
        `queue`; deleted with the deployment."""
        queue = f"{self.queue}-{name}"
        self._queues.append(queue)
        return queue

    def _delete_queues(self) -> None:
        for queue in self._queues:
            delete_queue(self.broker_url, queue)

    def close(self) -> None:
        self._teardown.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- workers --------------------------------------------------------------------------------

    def start_worker(self, name: str | None = None, **env: str) -> WorkerProcess:
        """Start `toonq worker` named `name` (one of its own by default), with `env` on top of
        the deployment's environment; not waiting for it to be ready."""
        return self.start_worker_on(None, name, **env)

    def start_worker_on(
        self, cpus: Collection[int] | None, name: str | None = None, **env: str
    ) -> WorkerProcess:
        """`start_worker`, on the CPUs numbered in `cpus` only (all of them if None)."""
        name = name or f"worker-{len(self.workers)}"
        # Verbose: what a throw-away deployment's logs are read for (by the tests, say) includes
        # Celery's own lines, such as which worker received a message.
        worker = WorkerProcess(
            self.env | {"TOONQ_WORKER_NAME": name} | env,
            self.home / f"{name}.log",
            cpus=cpus,
            verbose=True,
        )
        self.workers.append(worker)
        self._by_name[name] = worker
        return worker

    def start_workers(self, *names: str) -> list[WorkerProcess]:
        """Start workers side by side and wait until each is ready."""
        workers = [self.start_worker(name) for name in names]
        for worker in workers:
            worker.wait_ready()
        return workers

    def worker(self, name: str) -> WorkerProcess:
        """The worker last started under `name`."""
        return self._by_name[name]

    def _stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    # --- jobs -----------------------------------------------------------------------------------

    def input_uri(self, name: str) -> str:
        if self.bucket is not None:
            return f"s3://{self.bucket}/in/{name}"
        return (self.home / "inputs" / name).as_uri()

    def put_input(self, name: str, data: bytes, *, content_type: str = "image/png") -> str:
        """Store an input named `name` through the client; its URI."""
        uri = self.input_uri(name)
        self.client.objects.put(uri, data, content_type=content_type)
        return uri

    def submit(self, uris: Iterable[str], *, resolution: int | None = None) -> list[uuid.UUID]:
        jobs = self.client.submit_many(
            SubmitRequest(input_uri=uri, resolution=resolution) for uri in uris
        )
        return [job.id for job in jobs]

    def unfinished(self) -> int:
        """How many jobs are not in a final state."""
        with self.database.connect() as connection:
            count = connection.execute(
                _UNFINISHED, {"finished": sorted(status.value for status in FINISHED_STATUSES)}
            ).scalar_one()
        return int(count)

    def wait_until_final(self, *, timeout_s: float, poll_s: float = 0.25) -> None:
        """Wait until every job is in a final state; TimeoutError after `timeout_s`, with what
        the running workers' threads were doing. The poll only counts, so that it costs the
        system it watches next to nothing; a database that is down for a while (a test
        restarting it) is waited for within the same timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                left = self.unfinished()
            except SQLAlchemyError:
                if time.monotonic() > deadline:
                    raise
            else:
                if left == 0:
                    return
                if time.monotonic() > deadline:
                    stacks = "".join(
                        f"\n--- the threads of {worker.name} ---\n{worker.threads()}"
                        for worker in self.workers
                        if worker.running
                    )
                    raise TimeoutError(f"{left} jobs still unfinished after {timeout_s} s{stacks}")
            time.sleep(poll_s)
