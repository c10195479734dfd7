"""`toonq`: the operators' command line.

The queue commands (migrate, submit, status, jobs, requeue, cancel, recover) live here and need
only the producer install. Heavier packages contribute commands through the `toonq.commands`
entry-point group, as the worker does with worker, matte, model, bench, gpu-check, demo and eval:
they are loaded only when run (or listed by `--help`), and where their dependencies are missing
they explain what to install instead of failing on an import.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from toonq.producer.cli.commands import QUEUE_COMMANDS
from toonq.producer.cli.context import Context
from toonq.producer.cli.render import echo_error
from toonq.shared.errors import ConfigurationError, ToonqError

#: The entry-point group through which other packages add commands.
COMMAND_GROUP = "toonq.commands"


class ToonqGroup(click.Group):
    """Turns toonq's typed errors into one clear line and exit status 1, and loads contributed
    commands on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._contributed = {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._contributed})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self._contributed:
            command = _load(self._contributed[cmd_name])
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ToonqError as exc:
            echo_error(exc)
            sys.exit(1)


def _load(entry_point: EntryPoint) -> click.Command:
    try:
        command = entry_point.load()
    except ImportError as exc:
        return _unavailable(entry_point.name, exc)
    if not isinstance(command, click.Command):
        raise TypeError(f"entry point {entry_point.value} is not a click command")
    return command


def _unavailable(name: str, cause: ImportError) -> click.Command:
    """A stand-in for a command whose package cannot be imported here (the producer install
    has no torch): it accepts any arguments and says what to install."""

    def explain() -> None:
        raise ConfigurationError(
            f"`toonq {name}` runs the matting engine, which needs the worker extra "
            f"({cause.name or cause} is missing): pip install 'toonq[worker]'"
        )

    return click.Command(
        name,
        callback=explain,
        help="Needs the worker extra: pip install 'toonq[worker]'.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


@click.group(cls=ToonqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="toonq")
@click.option(
    "--verbose",
    is_flag=True,
    help="Log other libraries' progress too (botocore, Alembic, Celery, the Hugging Face hub).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """toonq: background removal for anime images, as a distributed job queue.

    Data goes to stdout; progress, logs and errors to stderr.
    """
    ctx.ensure_object(Context).verbose |= verbose


for _command in QUEUE_COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="toonq")
