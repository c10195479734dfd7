"""`toonq worker` with a database server and a network broker refuses `file://` job locations
at start, before it loads the model, unless TOONQ_ALLOW_FILE_URIS=1 (the cases in between:
tests/unit/test_job_locations.py)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_worker_device import worker_env
from tests.support import run_toonq

# Never connected to: the check comes before the model, the model before the database.
NETWORKED = {
    "TOONQ_DATABASE_URL": "postgresql://toonq@127.0.0.1:5432/toonq",
    "TOONQ_BROKER_URL": "redis://127.0.0.1:6379/0",
}


def test_a_networked_worker_refuses_its_default_file_output_prefix(tmp_path: Path) -> None:
    result = run_toonq("worker", env=worker_env(tmp_path, **NETWORKED))

    assert result.returncode == 1
    assert result.stdout == ""
    outputs = (tmp_path / "outputs").as_uri()
    assert result.stderr.startswith(
        f"error [configuration_error]: file:// job locations ({outputs})"
    )
    assert "TOONQ_ALLOW_FILE_URIS=1" in result.stderr


def test_a_networked_worker_allowed_file_locations_goes_on_to_load_its_model(
    tmp_path: Path,
) -> None:
    env = worker_env(tmp_path, **NETWORKED, TOONQ_ALLOW_FILE_URIS="1")
    result = run_toonq("worker", "--device", "cpu", env=env)

    assert result.returncode == 1
    assert result.stderr.startswith("error [model_unavailable]"), result.stderr
