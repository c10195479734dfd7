"""What `--help` says of the worker's commands agrees with what the code does."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from toonq.producer.cli.main import cli
from toonq.worker.main import default_concurrency


@pytest.mark.parametrize("batch_size", [1, 8])
def test_worker_help_states_the_default_concurrency_the_worker_computes(batch_size: int) -> None:
    shown = CliRunner().invoke(cli, ["worker", "-h"])

    assert shown.exit_code == 0, shown.output
    assert "4 x the batch size + 2" in " ".join(shown.stdout.split())
    assert default_concurrency(batch_size) == 4 * batch_size + 2
