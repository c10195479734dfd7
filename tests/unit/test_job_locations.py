"""Which workers refuse `file://` job locations: those whose producers and fellow workers may be
on other machines (a database server and a network broker), unless TOONQ_ALLOW_FILE_URIS=1."""

from __future__ import annotations

from pathlib import Path

import pytest

from toonq.shared.errors import ConfigurationError
from toonq.shared.settings import Settings
from toonq.worker.main import check_job_locations

POSTGRES = {"TOONQ_DATABASE_URL": "postgresql://toonq@db/toonq"}
REDIS = {"TOONQ_BROKER_URL": "redis://redis:6379/0"}
S3_OUTPUTS = {"TOONQ_OUTPUT_PREFIX": "s3://media/out"}


def settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"TOONQ_HOME": str(home), **env})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        pytest.param({}, "outputs", id="default-output-prefix"),
        pytest.param({"TOONQ_OUTPUT_PREFIX": "file:///srv/out"}, "/srv/out", id="output-prefix"),
        pytest.param(
            S3_OUTPUTS | {"TOONQ_ALLOWED_OUTPUT_PREFIXES": "s3://more, file:///srv/more"},
            "/srv/more",
            id="allowed-output-prefix",
        ),
        pytest.param(
            S3_OUTPUTS | {"TOONQ_ALLOWED_INPUT_PREFIXES": "file:///srv/in"},
            "/srv/in",
            id="allowed-input-prefix",
        ),
        pytest.param({"TOONQ_ALLOW_FILE_URIS": "0"}, "outputs", id="opted-out"),
    ],
)
def test_a_networked_worker_refuses_file_locations(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError, match="TOONQ_ALLOW_FILE_URIS=1") as raised:
        check_job_locations(settings(tmp_path, **POSTGRES, **REDIS, **env))

    assert raised.value.code == "configuration_error"
    assert named in str(raised.value)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(POSTGRES | REDIS | {"TOONQ_ALLOW_FILE_URIS": "1"}, id="opted-in"),
        pytest.param(POSTGRES | REDIS | S3_OUTPUTS, id="s3-only"),
        pytest.param({}, id="embedded"),
        pytest.param(POSTGRES, id="folder-broker"),
        pytest.param(REDIS, id="sqlite"),
        pytest.param(POSTGRES | {"TOONQ_BROKER_URL": "memory://"}, id="in-process-broker"),
    ],
)
def test_other_workers_may_use_file_locations(tmp_path: Path, env: dict[str, str]) -> None:
    check_job_locations(settings(tmp_path, **env))
