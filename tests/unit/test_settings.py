"""Settings from the environment: embedded defaults, URL forms, and typed refusals."""

from __future__ import annotations

import re
from dataclasses import Field, fields
from pathlib import Path

import pytest

from toonq.shared.errors import ConfigurationError
from toonq.shared.settings import Settings


def test_no_configuration_means_embedded_defaults_under_toonq_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"TOONQ_HOME": str(tmp_path)})

    assert settings.database_url == f"sqlite:///{tmp_path / 'toonq.db'}"
    assert settings.is_embedded_broker
    assert settings.output_prefix == (tmp_path / "outputs").as_uri()
    assert (settings.queue, settings.model, settings.resolution) == (
        "matting",
        "joelseytre/toonout",
        1024,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://toonq@db/jobs", "postgresql+psycopg://toonq@db/jobs"),
        ("postgres://toonq@db/jobs", "postgresql+psycopg://toonq@db/jobs"),
        ("postgresql+psycopg://toonq@db/jobs", "postgresql+psycopg://toonq@db/jobs"),
        ("sqlite:////var/lib/toonq.db", "sqlite:////var/lib/toonq.db"),
    ],
)
def test_database_urls_in_plain_and_driver_forms(url: str, expected: str) -> None:
    assert Settings.from_env({"TOONQ_DATABASE_URL": url}).database_url == expected


def test_log_level_is_case_insensitive() -> None:
    assert Settings.from_env({"TOONQ_LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOONQ_RESOLUTION": "1000"}, "multiple of 32"),
        ({"TOONQ_RESOLUTION": "8192"}, "up to 2048"),
        ({"TOONQ_RESOLUTION": "3072"}, "up to 2048, got 3072 .TOONQ_MAX_RESOLUTION."),
        ({"TOONQ_MAX_RESOLUTION": "8192"}, "TOONQ_MAX_RESOLUTION must be .* up to 4096"),
        ({"TOONQ_MAX_RESOLUTION": "1000"}, "TOONQ_MAX_RESOLUTION must be a positive multiple"),
        ({"TOONQ_MAX_RESOLUTION": "512"}, "TOONQ_RESOLUTION must be .* up to 512, got 1024"),
        ({"TOONQ_MAX_ATTEMPTS": "three"}, "must be an integer"),
        ({"TOONQ_MAX_ATTEMPTS": "0"}, ">= 1"),
        ({"TOONQ_PRECISION": "fp8"}, "TOONQ_PRECISION must be one of"),
        ({"TOONQ_LOG_LEVEL": "loud"}, "TOONQ_LOG_LEVEL must be one of"),
        ({"TOONQ_RETRY_BACKOFF_MAX_S": "4000"}, "below TOONQ_VISIBILITY_TIMEOUT_S"),
        ({"TOONQ_RESEND_AFTER_S": "60"}, "at least TOONQ_VISIBILITY_TIMEOUT_S"),
        ({"TOONQ_REDIS_SOCKET_TIMEOUT_S": "0.5"}, "kombu's BRPOP timeout"),
        (
            {"TOONQ_TENANT_QUEUE_SLOTS": "0", "TOONQ_TENANT_MAX_IN_FLIGHT": "2"},
            "TOONQ_TENANT_MAX_IN_FLIGHT needs TOONQ_TENANT_QUEUE_SLOTS above 0",
        ),
    ],
)
def test_bad_values_are_refused_with_a_typed_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


def test_every_setting_is_documented_in_the_readme_configuration_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(TOONQ_[A-Z0-9_]+)`", table))
    assert set(Settings.variables()) - documented == set()


#: The settings whose default is a value one can write (unset means the others' defaults).
_WRITTEN_DEFAULTS = [
    f for f in fields(Settings) if f.default not in (None, False, "", ()) and f.name != "home"
]


@pytest.mark.parametrize("field", _WRITTEN_DEFAULTS, ids=lambda field: field.name)
def test_each_default_reads_back_from_its_variable(field: Field[object]) -> None:
    env = {field.metadata["toonq_variable"]: str(field.default)}
    assert getattr(Settings.from_env(env), field.name) == field.default
