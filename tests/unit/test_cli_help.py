"""What `--help` says of the worker's commands agrees with what the code does."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from toonq.producer.cli.main import cli
from toonq.shared.settings import Settings
from toonq.worker.pipeline import default_concurrency


@pytest.mark.parametrize("batch_size", [1, 8])
def test_worker_help_states_the_default_concurrency_the_worker_computes(batch_size: int) -> None:
    shown = CliRunner().invoke(cli, ["worker", "-h"])

    assert shown.exit_code == 0, shown.output
    assert "4 x the batch size + 2" in " ".join(shown.stdout.split())
    assert default_concurrency(batch_size) == 4 * batch_size + 2


def help_text(*command: str) -> str:
    shown = CliRunner().invoke(cli, [*command, "-h"])
    assert shown.exit_code == 0, shown.output
    return " ".join(shown.stdout.split())


@pytest.mark.parametrize("command", [("matte",), ("submit",), ("eval",)])
def test_resolution_help_states_the_default_the_settings_give(command: tuple[str, ...]) -> None:
    default = Settings.from_env({}).resolution

    assert f"[default: TOONQ_RESOLUTION, else {default}]" in help_text(*command)


def test_every_matte_option_is_explained() -> None:
    matte = cli.get_command(click.Context(cli), "matte")
    assert matte is not None

    unexplained = [p.name for p in matte.params if isinstance(p, click.Option) and not p.help]
    assert unexplained == []
