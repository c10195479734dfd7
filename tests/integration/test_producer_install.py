"""The producer side (client and queue CLI) works without the worker's dependencies."""

from __future__ import annotations

import subprocess
import sys

# Runs in a fresh interpreter in which the worker's heavy dependencies cannot be imported.
_PROGRAM = """
import sys
for name in ("torch", "torchvision", "transformers", "numpy", "PIL", "safetensors"):
    sys.modules[name] = None  # any import of them now raises ImportError
from toonq.producer import ToonqClient
from toonq.producer.cli.main import cli
sys.argv = ["toonq", *sys.argv[1:]]
cli(prog_name="toonq")
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_the_client_and_the_queue_commands_need_no_torch(tmp_path) -> None:
    env = {"TOONQ_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    assert run("--help").returncode == 0
    migrated = run("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    listed = run("jobs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "[]"


def test_engine_commands_explain_what_to_install(tmp_path) -> None:
    env = {"TOONQ_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for command in (["worker"], ["matte", str(tmp_path), "--out", str(tmp_path)], ["demo"]):
        result = run(*command, env=env)
        assert result.returncode == 1, command
        assert "error [configuration_error]" in result.stderr
        assert "pip install 'toonq[worker]'" in result.stderr
