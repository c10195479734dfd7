"""What a worker records on every job (its name, its model's name) must fit the job table: a
worker whose name or model spec is too long exits at once with `configuration_error`, before it
loads the model or takes a job, rather than failing every job's outcome write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import run_toonq


def worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # Weights that do not exist: a worker that got past the check fails on them instead.
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOONQ_")}
    return env | {"TOONQ_HOME": str(tmp_path), "TOONQ_MODEL": str(tmp_path / "none.pth")} | extra


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"TOONQ_WORKER_NAME": "w" * 256},
            "the worker name (TOONQ_WORKER_NAME, or host:gpuN) is 256 characters long, "
            "over the limit of 255",
        ),
        (
            {"TOONQ_MODEL": "/models/" + "m" * 300 + ".pth"},
            "the model spec (TOONQ_MODEL) is 312 characters long, over the limit of 255",
        ),
    ],
)
def test_a_name_too_long_for_the_job_table_stops_the_worker_at_start(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    result = run_toonq("worker", "--device", "cpu", env=worker_env(tmp_path, **env))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"error [configuration_error]: {expected}\n"


def test_a_name_that_fits_goes_on_to_load_the_model(tmp_path: Path) -> None:
    env = worker_env(tmp_path, TOONQ_WORKER_NAME="w" * 255)

    result = run_toonq("worker", "--device", "cpu", env=env)

    assert result.stderr.startswith("error [model_unavailable]")
