"""A program running in the background with its output in a log file: waited on until a
condition holds, stopped with SIGTERM (SIGKILL when it does not stop in time), or killed."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

#: Lines of a log that errors quote.
TAIL_LINES = 40


class ProcessExitedError(RuntimeError):
    """A process exited while it was waited on."""

    def __init__(self, name: str, returncode: int, log_tail: list[str]) -> None:
        super().__init__(
            "\n".join([f"{name} exited with status {returncode}; the end of its log:", *log_tail])
        )
        self.returncode = returncode


class ChildProcess:
    """`command` started now, with `env` (this process's environment if None), its standard
    output and error written to `log_path`. Stopped on leaving a `with` block."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                list(command),
                env=None if env is None else dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time the process and its live descendants (a worker's job processes) have used
        so far, user and system (Linux: from /proc)."""
        ticks = 0
        for pid in self._tree():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # it ended
                continue
            # The fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def context_switches(self) -> int:
        """Context switches so far, voluntary and not, of the threads alive now of the process
        and its descendants (Linux: from /proc). A thread that waits for a lock or the GIL
        switches out."""
        switches = 0
        for pid in self._tree():
            for status in Path(f"/proc/{pid}/task").glob("*/status"):
                try:
                    lines = status.read_text().splitlines()
                except OSError:  # the thread ended
                    continue
                switches += sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
        return switches

    def _tree(self) -> list[int]:
        """The process and its descendants alive now, found by their parent ids in /proc (as
        `ps` finds them: the per-thread `children` lists are only a snapshot)."""
        parents: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:  # it ended
                continue
            # The fields after the command name, which is in parentheses and may hold spaces.
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
        tree, index = [self.process.pid], 0
        while index < len(tree):
            tree += parents.get(tree[index], [])
            index += 1
        return tree

    def log_tail(self, lines: int = TAIL_LINES) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()[-lines:]

    def check_running(self) -> None:
        """Raise ProcessExitedError, with the end of the log, if the process has exited."""
        returncode = self.process.poll()
        if returncode is not None:
            raise ProcessExitedError(self.name, returncode, self.log_tail())

    def wait_until(
        self,
        condition: Callable[[], bool],
        *,
        waiting_for: str,
        timeout_s: float,
        poll_s: float = 0.1,
    ) -> None:
        """Poll `condition` until it holds. ProcessExitedError if the process exits first,
        TimeoutError after `timeout_s`; both quote the end of the log."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            self.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    "\n".join(
                        [
                            f"gave up waiting {timeout_s} s for {waiting_for} ({self.name});"
                            " the end of its log:",
                            *self.log_tail(),
                        ]
                    )
                )
            time.sleep(poll_s)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then SIGKILL if the process still runs after `timeout_s`; its exit status."""
        if self.running:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self.process.kill()
        self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
