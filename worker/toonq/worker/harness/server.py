"""Servers run for a while (a test session, a benchmark): started on entering a `with` block,
stopped and their files deleted on leaving it."""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Self

from toonq.worker.harness.network import free_port
from toonq.worker.harness.process import ChildProcess


class ManagedServer(ABC):
    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Stop the server and delete its files."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ProgramServer(ManagedServer):
    """A server program in a child process, on `port` (a free one by default) of 127.0.0.1, its
    log and files in a temporary folder of its own (`root`)."""

    #: How long the server may take to answer once started.
    start_timeout_s = 30.0

    def __init__(self, name: str, *, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"toonq-{name}-"))
        self.process: ChildProcess | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the server."""

    @abstractmethod
    def answers(self) -> bool:
        """Whether the server answers requests now."""

    def start(self) -> None:
        self.process = ChildProcess(
            self.command(), name=self.name, log_path=self.root / "server.log"
        )
        self.process.wait_until(
            self.answers,
            waiting_for=f"{self.name} to answer",
            timeout_s=self.start_timeout_s,
            poll_s=0.05,
        )

    def close(self) -> None:
        if self.process is not None:
            self.process.stop(timeout_s=10)
        shutil.rmtree(self.root, ignore_errors=True)
