"""The README's `toonq` command lines agree with the CLI: each command, subcommand and option they
use exists, and each command the CLI lists appears in them. (`test_settings.py` checks the
configuration table against the settings.)"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from toonq.producer.cli.main import cli

README = Path(__file__).parents[2] / "README.md"

_FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# In a fenced block: a line running toonq, maybe after VAR=value assignments and a path
# (`.venv/bin/toonq`). In the prose: an inline code span that starts with `toonq `.
_BLOCK_COMMAND = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(?:\S*/)?(toonq\s.*)$", re.MULTILINE)
_INLINE_COMMAND = re.compile(r"`(toonq [^`]+)`")
# A word in capitals stands for what the reader fills in: `toonq --verbose COMMAND`.
_PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*(\.\.\.)?")


def readme_command_lines() -> list[str]:
    text = README.read_text()
    blocks = _FENCED_BLOCK.findall(text)
    prose = _FENCED_BLOCK.sub("", text)
    in_blocks = [line for block in blocks for line in _BLOCK_COMMAND.findall(block)]
    return sorted({*in_blocks, *_INLINE_COMMAND.findall(prose)})


def command_path(line: str) -> tuple[str, ...]:
    """The names of the (sub)commands that `line` runs, e.g. ("model", "fetch"), checked with
    click's own parser: a click.UsageError names the command or option that does not exist."""
    # Comments and the brackets of optional arguments (`[--json]`) are no part of the command.
    words = [word.strip("[]") for word in shlex.split(line, comments=True)[1:]]
    context, rest = parse(cli, "toonq", words, parent=None)
    path: list[str] = []
    while isinstance(group := context.command, click.Group):
        if not rest or _PLACEHOLDER.fullmatch(rest[0]):
            break
        name, command, rest = group.resolve_command(context, rest)
        # For a word that names no command, resolve_command raised a UsageError.
        assert name is not None
        assert command is not None
        path.append(name)
        context, rest = parse(command, name, rest, parent=context)
    return tuple(path)


def parse(
    command: click.Command, name: str, words: list[str], *, parent: click.Context | None
) -> tuple[click.Context, list[str]]:
    """`command`'s context for `words`, and the words its options and arguments leave (for a
    group: its subcommand and what follows). Only names are checked, not values."""
    context = click.Context(command, info_name=name, parent=parent, **command.context_settings)
    try:
        # A copy: the parser consumes the list it is given.
        _, rest, _ = command.make_parser(context).parse_args([*words])
    except click.BadOptionUsage as exc:
        # Prose may name an option without its value, last: `toonq matte --batch-size`.
        if exc.option_name != words[-1]:
            raise
        rest = []
    return context, rest


def visible_commands(group: click.Group, parent: click.Context) -> Iterator[tuple[str, ...]]:
    """The paths of the commands that `--help` lists under `group`, subcommands included."""
    context = click.Context(group, parent=parent)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        yield (name,)
        if isinstance(command, click.Group):
            yield from ((name, *path) for path in visible_commands(command, context))


@pytest.mark.parametrize("line", readme_command_lines())
def test_each_readme_command_line_uses_commands_and_options_that_exist(line: str) -> None:
    try:
        command_path(line)
    except click.UsageError as exc:
        pytest.fail(f"README: `{line}`: {exc.format_message()}")


def test_each_command_the_cli_lists_appears_in_the_readme() -> None:
    paths = [command_path(line) for line in readme_command_lines()]
    # `toonq model fetch` documents `toonq model` too.
    documented = {path[:end] for path in paths for end in range(1, len(path) + 1)}

    listed = set(visible_commands(cli, click.Context(cli, info_name="toonq")))

    assert listed - documented == set()
