"""The deployment harness's own parts: background processes, ports and local S3 credentials."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from toonq.worker.harness.moto import LOCAL_S3_CREDENTIALS, local_s3_credentials
from toonq.worker.harness.network import answers_ok, free_port
from toonq.worker.harness.process import ChildProcess, ProcessExitedError


def python(code: str, log_path: Path) -> ChildProcess:
    return ChildProcess([sys.executable, "-c", code], name="the script", log_path=log_path)


def test_a_process_that_exits_while_waited_on_is_reported_with_the_end_of_its_log(
    tmp_path: Path,
) -> None:
    script = "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"
    with python(script, tmp_path / "log") as process, pytest.raises(ProcessExitedError) as raised:
        process.wait_until(lambda: False, waiting_for="nothing", timeout_s=30)

    assert raised.value.returncode == 3
    message = str(raised.value)
    assert message.startswith("the script exited with status 3")
    assert message.endswith("line 99")
    assert "line 59\n" not in message  # only the end of the log


def test_context_switches_count_every_thread_of_the_process(tmp_path: Path) -> None:
    # Two threads that each nap 200 times (every nap gives up the core), then stay alive.
    script = (
        "import threading, time\n"
        "def naps():\n"
        "    for _ in range(200): time.sleep(0.001)\n"
        "    print('napped', flush=True)\n"
        "    time.sleep(60)\n"
        "for _ in range(2): threading.Thread(target=naps, daemon=True).start()\n"
        "time.sleep(60)"
    )
    with python(script, tmp_path / "log") as process:
        process.wait_until(
            lambda: process.log_path.read_text().count("napped") == 2,
            waiting_for="both threads' naps",
            timeout_s=30,
        )

        assert process.context_switches() >= 400


def test_cpu_time_and_context_switches_count_the_processes_it_started(tmp_path: Path) -> None:
    # The parent sleeps; its child spins for 0.5 s of CPU and naps 200 times, then stays alive.
    child = (
        "import time\n"
        "end = time.process_time() + 0.5\n"
        "while time.process_time() < end: pass\n"
        "for _ in range(200): time.sleep(0.001)\n"
        "print('done', flush=True)\n"
        "time.sleep(60)"
    )
    script = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}])\n"
    script += "time.sleep(60)"
    with python(script, tmp_path / "log") as process:
        process.wait_until(
            lambda: "done" in process.log_path.read_text(),
            waiting_for="the child's work",
            timeout_s=30,
        )

        assert process.cpu_seconds() >= 0.5
        assert process.context_switches() >= 200


def test_waiting_gives_up_after_the_timeout(tmp_path: Path) -> None:
    with python(
        "import time; print('still here', flush=True); time.sleep(60)", tmp_path / "log"
    ) as process:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="the moon") as raised:
            process.wait_until(lambda: False, waiting_for="the moon", timeout_s=0.5)

        assert time.monotonic() - started < 10
        assert process.running
    assert "still here" in str(raised.value)
    assert not process.running


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)"
    )
    process = python(script, tmp_path / "log")
    process.wait_until(
        lambda: "ready" in process.log_path.read_text(), waiting_for="the script", timeout_s=30
    )

    assert process.stop(timeout_s=0.5) == -signal.SIGKILL


def test_stop_lets_a_process_end_on_sigterm(tmp_path: Path) -> None:
    process = python("import time; time.sleep(60)", tmp_path / "log")

    assert process.stop() == -signal.SIGTERM


def test_free_ports_are_free_and_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]

    assert len(set(ports)) == len(ports)
    assert not answers_ok(f"http://127.0.0.1:{ports[0]}/")


def test_local_s3_credentials_replace_the_operators_for_the_block_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREAL")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)

    with local_s3_credentials():
        assert "AWS_PROFILE" not in os.environ
        assert {name: os.environ[name] for name in LOCAL_S3_CREDENTIALS} == LOCAL_S3_CREDENTIALS

    assert os.environ["AWS_PROFILE"] == "production"
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIAREAL"
    assert "AWS_SESSION_TOKEN" not in os.environ
