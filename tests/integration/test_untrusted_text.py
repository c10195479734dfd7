"""Text that callers hand in (idempotency keys, reasons), against real PostgreSQL: what the
database cannot store is refused with `invalid_request` before anything is written, and what
people read escapes control characters (a terminal escape in a key stays text)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from toonq.producer import ToonqClient
from toonq.producer.cli.context import Context
from toonq.producer.cli.main import cli
from toonq.shared.errors import InvalidRequestError
from toonq.shared.settings import Settings

#: Sets the terminal's title and turns its text red, if printed raw.
HOSTILE = "\x1b]0;owned\x07\x1b[31mred\x9b2J"
HOSTILE_SHOWN = "\\x1b]0;owned\\x07\\x1b[31mred\\x9b2J"


@pytest.fixture
def client(producer_settings: Settings) -> Iterator[ToonqClient]:
    with ToonqClient(producer_settings, actor="cli:ops@laptop") as client:
        yield client


@pytest.fixture
def input_uri(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/in/a.png"


def toonq(client: ToonqClient, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), obj=Context(client))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("sticker\x0042", "the idempotency key contains a NUL character"),
        ("k" * 256, "an idempotency key must have 1 to 255 characters"),
        ("sticker-\udcff", "the idempotency key is not valid Unicode text"),
    ],
)
def test_an_idempotency_key_the_database_cannot_store_is_refused(
    client: ToonqClient, input_uri: str, key: str, message: str
) -> None:
    result = toonq(client, "submit", input_uri, "--idempotency-key", key)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error [invalid_request]: {message}")
    assert client.list() == []
    with pytest.raises(InvalidRequestError, match=message):
        client.submit(input_uri, idempotency_key=key)


def test_the_longest_idempotency_key_is_taken(client: ToonqClient, input_uri: str) -> None:
    assert client.submit(input_uri, idempotency_key="k" * 255).idempotency_key == "k" * 255


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("bad\x00input", "the reason contains a NUL character"),
        ("r" * 1001, "the reason is 1001 characters long, over the limit of 1000"),
    ],
)
@pytest.mark.parametrize("command", ["cancel", "requeue"])
def test_a_reason_the_database_cannot_store_is_refused(
    client: ToonqClient, input_uri: str, command: str, reason: str, message: str
) -> None:
    job = client.submit(input_uri)
    if command == "requeue":
        client.cancel(job.id)
    history = client.events(job.id)

    result = toonq(client, command, str(job.id), "--reason", reason)

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error [invalid_request]: {message}")
    assert client.events(job.id) == history


def test_keys_and_reasons_are_shown_escaped_and_kept_as_given(
    client: ToonqClient, input_uri: str
) -> None:
    job = client.submit(input_uri, idempotency_key=HOSTILE)
    assert toonq(client, "cancel", str(job.id), "--reason", HOSTILE).exit_code == 0

    shown = toonq(client, "status", str(job.id))
    as_json = json.loads(toonq(client, "status", str(job.id), "--json").stdout)

    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.stdout
    assert "\x9b" not in shown.stdout
    assert f"idempotency_key:{HOSTILE_SHOWN}" in shown.stdout.replace(" ", "")
    assert f"({HOSTILE_SHOWN})" in shown.stdout
    assert as_json["idempotency_key"] == HOSTILE
    assert as_json["events"][-1]["reason"] == HOSTILE


def test_an_error_message_is_shown_escaped(client: ToonqClient, input_uri: str) -> None:
    # The message names the job id it was given: a control character in it is escaped.
    result = toonq(client, "status", "0123abcd\x1b[2J")

    assert result.exit_code == 1
    assert "\x1b" not in result.stderr
    assert "\\x1b[2J" in result.stderr
