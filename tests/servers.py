"""PostgreSQL, Redis and S3 (moto) servers of a test's own, on free ports, that it may kill and
restart at will without disturbing the shared services.

    with PrivatePostgres() as postgres, PrivateRedis() as redis_server:
        ...  # postgres.url, redis_server.url
        redis_server.restart()  # SIGKILL, then a new server on the same port, empty
        postgres.restart(mode="immediate")  # a crash: connections drop, committed data stays

PostgreSQL refuses to run as root: when the tests do, its commands run as the `postgres` user
(`runuser`), in a data folder that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import redis

START_TIMEOUT_S = 30.0
ShutdownMode = Literal["smart", "fast", "immediate"]


class ServerUnavailableError(RuntimeError):
    """A server's program is not installed, or cannot run here."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _ManagedServer(ABC):
    """Context-manager plumbing shared by the servers: start on enter, clean up on exit."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Stop the server and delete its files."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- PostgreSQL -----------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The folder of `initdb` and `pg_ctl`: on PATH, else the newest Debian-style install."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise ServerUnavailableError("PostgreSQL's initdb and pg_ctl are not installed")


def _run_as_postgres_prefix() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs PostgreSQL's programs, and the uid/gid that must own its
    files: none of it unless we are root, which initdb and postgres refuse to run as."""
    if os.geteuid() != 0:
        return [], None, None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServerUnavailableError("running as root, and runuser is missing to drop to postgres")
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailableError("running as root, and there is no postgres user") from None
    return [runuser, "-u", "postgres", "--"], account.pw_uid, account.pw_gid


class PrivatePostgres(_ManagedServer):
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only, trusting local
    connections. Durability settings are off (fsync): an immediate shutdown still keeps every
    committed transaction, which is what a server crash, as opposed to a host crash, loses."""

    def __init__(self, *, port: int | None = None) -> None:
        self.bin_dir = postgres_bin_dir()
        self._prefix, uid, gid = _run_as_postgres_prefix()
        self.port = port or free_port()
        # Not under pytest's tmp_path: its parents are private to the user running the tests.
        self.root = Path(tempfile.mkdtemp(prefix="toonq-pg-"))
        if uid is not None and gid is not None:
            os.chown(self.root, uid, gid)
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"

    @property
    def url(self) -> str:
        """An admin URL (database `postgres`), in the SQLAlchemy form toonq and tests accept."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, program: str, *args: str) -> None:
        command = [*self._prefix, str(self.bin_dir / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{result.stderr}\n{log}")

    def start(self) -> None:
        if not self.data_dir.exists():
            self._pg(
                "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--no-sync"
            )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._pg(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path),
            "-o", options, "-w", "-t", str(int(START_TIMEOUT_S)),
        )  # fmt: skip

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Shut down: "fast" disconnects clients cleanly, "immediate" is a crash."""
        self._pg("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w")

    def restart(self, mode: ShutdownMode = "immediate", *, down_s: float = 0.0) -> None:
        """Stop, stay down for `down_s` seconds, and start again on the same port."""
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- Redis ----------------------------------------------------------------------------------------


class PrivateRedis(_ManagedServer):
    """A `redis-server` that keeps nothing on disk: a restart loses every message, like a broker
    whose persistence is off (or whose data was lost)."""

    def __init__(self, *, port: int | None = None) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise ServerUnavailableError("redis-server is not installed")
        self.program = program
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="toonq-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with (self.root / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.program, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.root),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited at start:\n{(self.root / 'server.log').read_text()}"
                    )
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server: clients see dropped connections, and the data is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self, *, down_s: float = 0.0) -> None:
        """Kill, stay down for `down_s` seconds, and start an empty server on the same port."""
        self.kill()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


# --- S3 (moto) ------------------------------------------------------------------------------------


class MotoS3(_ManagedServer):
    """A moto S3 server in a subprocess, for programs that run outside pytest's fixtures."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="toonq-moto-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log_path = self.root / "server.log"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the moto server exited at start:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
