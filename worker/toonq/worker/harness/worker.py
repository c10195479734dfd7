"""A `toonq worker` process, started from an environment and waited on until it is ready.

Ready means that its /readyz probe answers 200: the model is loaded and warm and the consumer
is starting. The probe says so whatever the log's format or level; it listens on
TOONQ_METRICS_PORT, a free port unless the environment names one, on the loopback interface
unless TOONQ_METRICS_HOST names another: a harness's worker is nobody else's business.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path

from toonq.worker.harness.network import answers_ok, free_port
from toonq.worker.harness.process import ChildProcess

#: The `toonq` command line, run by the interpreter running this.
TOONQ_COMMAND = (sys.executable, "-m", "toonq.producer.cli")


class WorkerProcess(ChildProcess):
    """`toonq worker` with `env`, logging to `log_path` (with Celery's and the other libraries'
    lines too when `verbose`), on the CPUs numbered in `cpus` (all by default; `taskset`);
    stopped with SIGTERM (a warm shutdown: jobs in hand finish or are handed back) on leaving a
    `with` block."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        cpus: Collection[int] | None = None,
        verbose: bool = False,
    ) -> None:
        self.port = int(env.get("TOONQ_METRICS_PORT") or 0) or free_port()
        pinned = [] if cpus is None else ["taskset", "--cpu-list", ",".join(map(str, cpus))]
        super().__init__(
            [*pinned, *TOONQ_COMMAND, *(["--verbose"] if verbose else []), "worker"],
            name=f"the worker logging to {log_path}",
            log_path=log_path,
            env={"TOONQ_METRICS_HOST": "127.0.0.1", **env, "TOONQ_METRICS_PORT": str(self.port)},
        )

    @property
    def ready(self) -> bool:
        """Whether the worker consumes now."""
        return answers_ok(f"http://127.0.0.1:{self.port}/readyz")

    def threads(self, *, wait_s: float = 2.0) -> str:
        """What the worker's threads are doing: their stacks, which Celery's worker writes to
        its log on SIGUSR1 (waited for `wait_s`); empty if the worker has exited."""
        if not self.running:
            return ""
        written = self.log_path.stat().st_size
        os.kill(self.process.pid, signal.SIGUSR1)
        time.sleep(wait_s)
        with self.log_path.open("rb") as log:
            log.seek(written)
            return log.read().decode(errors="replace")

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Wait until the worker consumes; ProcessExitedError if it exits first (a missing
        model, a bad setting), with the end of its log."""
        self.wait_until(
            lambda: self.ready, waiting_for="the worker to be ready", timeout_s=timeout_s
        )
