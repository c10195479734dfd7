"""What `toonq` prints, run as a user runs it: data on stdout, toonq's own messages on stderr,
and other libraries' progress (Alembic, botocore, the Hugging Face hub) only with --verbose."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import png_bytes, run_toonq
from toonq.worker.harness.network import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from tests.servers import SilentServer


def embedded_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The embedded setup (SQLite, a folder broker, a folder object store) under `tmp_path`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOONQ_")}
    return env | {"TOONQ_HOME": str(tmp_path / "home")} | extra


def test_migrate_prints_its_result_and_nothing_of_alembic(tmp_path: Path) -> None:
    result = run_toonq("migrate", env=embedded_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "database at head\n"
    assert result.stderr == ""


def test_verbose_shows_alembic_steps_on_stderr(tmp_path: Path) -> None:
    result = run_toonq("--verbose", "migrate", env=embedded_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "database at head\n"
    assert "Running upgrade" in result.stderr


def test_submitting_an_s3_input_prints_the_job_only(
    tmp_path: Path, s3_server: str, s3_bucket: str, s3_client: S3Client
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="in/a.png", Body=png_bytes())
    env = embedded_env(
        tmp_path,
        TOONQ_S3_ENDPOINT_URL=s3_server,
        TOONQ_OUTPUT_PREFIX=f"s3://{s3_bucket}/out",
    )
    assert run_toonq("migrate", env=env).returncode == 0
    args = ("submit", f"s3://{s3_bucket}/in/a.png")

    quiet = run_toonq(*args, env=env)
    verbose = run_toonq("--verbose", *args, env=env)

    assert quiet.returncode == 0, quiet.stderr
    assert re.fullmatch(rf"\S+ queued s3://{s3_bucket}/out/\S+\.png\n", quiet.stdout)
    assert quiet.stderr == ""
    assert verbose.returncode == 0, verbose.stderr
    assert "Found credentials in environment variables" in verbose.stderr


@pytest.mark.usefixtures("aws_env")
def test_submit_to_a_silent_s3_says_storage_unavailable_within_its_timeouts(
    tmp_path: Path, silent_server: SilentServer
) -> None:
    endpoint = f"http://{silent_server.address}"
    env = embedded_env(
        tmp_path,
        TOONQ_S3_ENDPOINT_URL=endpoint,
        TOONQ_S3_CONNECT_TIMEOUT_S="1",
        TOONQ_S3_READ_TIMEOUT_S="2",
        TOONQ_S3_MAX_ATTEMPTS="10",  # the workers' retries, not the submit's
        TOONQ_OUTPUT_PREFIX="s3://bucket/out",
    )
    started = time.monotonic()
    assert run_toonq("--version", env=env).returncode == 0
    start_up = time.monotonic() - started  # Python and toonq's imports, slow on a loaded machine

    started = time.monotonic()
    result = run_toonq("submit", "s3://bucket/in.png", env=env)
    waited = time.monotonic() - started - start_up

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error [storage_unavailable]: s3://bucket/in.png: ")
    assert endpoint in result.stderr
    assert silent_server.connections() == 1
    # Bounded by connect + read timeouts (3 s); the margin is for a loaded machine.
    assert waited < 3 * 3


def test_demo_without_the_model_says_so_once_and_names_a_setting_that_exists(
    tmp_path: Path,
) -> None:
    # A hub where nothing listens: the download is retried, then fails.
    env = embedded_env(
        tmp_path, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{free_port()}"
    )
    env.pop("HF_HUB_OFFLINE", None)

    result = run_toonq("demo", "--images", "1", "--timeout", "120", env=env, timeout=180)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("error [model_unavailable]") == 1
    assert "Retrying" not in result.stderr
    assert "TOONQ_MODEL=random:tiny" in result.stderr
    assert "--model" not in result.stderr
