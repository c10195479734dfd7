"""PostgreSQL and Redis servers of a test's own, on free ports, that it may kill and restart at
will without disturbing the shared services; and a server that never answers.

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
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

import redis

from toonq.worker.harness.network import free_port
from toonq.worker.harness.server import ManagedServer, ProgramServer

START_TIMEOUT_S = 30.0
ShutdownMode = Literal["smart", "fast", "immediate"]


class ServerUnavailableError(RuntimeError):
    """A server's program is not installed, or cannot run here."""


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


class PrivatePostgres(ManagedServer):
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


class PrivateRedis(ProgramServer):
    """A `redis-server` that keeps nothing on disk: a restart loses every message, like a broker
    whose persistence is off (or whose data was lost)."""

    def __init__(self, *, port: int | None = None) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise ServerUnavailableError("redis-server is not installed")
        self.program = program
        super().__init__("redis", port=port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.program, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.root),
        ]  # fmt: skip

    def answers(self) -> bool:
        with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

    def kill(self) -> None:
        """SIGKILL the server: clients see dropped connections, and the data is gone."""
        if self.process is not None:
            self.process.kill()
        self.process = None

    def restart(self, *, down_s: float = 0.0) -> None:
        """Kill, stay down for `down_s` seconds, and start an empty server on the same port."""
        self.kill()
        time.sleep(down_s)
        self.start()


# --- A server that never answers ------------------------------------------------------------------


class SilentServer:
    """Accepts connections and never answers: an S3 endpoint or a Redis behind a dead link.

    with SilentServer() as server:
        ...  # server.address (host:port); server.connections() counts the attempts so far
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.setblocking(False)
        self._accepted: list[socket.socket] = []
        host, port = self._listener.getsockname()
        self.address = f"{host}:{port}"

    def connections(self) -> int:
        """How many connections clients have opened so far, closed ones included: the kernel
        keeps each in the listener's queue until it is accepted, and accepting reads nothing."""
        while True:
            try:
                connection, _ = self._listener.accept()
            except BlockingIOError:
                return len(self._accepted)
            self._accepted.append(connection)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for connection in self._accepted:
            connection.close()
        self._listener.close()
