"""Free text that callers and operators hand in (idempotency keys, reasons, worker and model
names): refused with a typed error, at the boundary, when the job table cannot store it, rather
than failing later in the database with a driver's error."""

from __future__ import annotations

from typing import Final

from toonq.shared.errors import InvalidRequestError, ToonqError

#: The longest reason recorded in a job's history: a note for people, not a document.
REASON_LENGTH: Final = 1000


def check_text(
    value: str,
    *,
    what: str,
    max_length: int,
    error: type[ToonqError] = InvalidRequestError,
) -> str:
    """`value` if the database can store it: no NUL character (PostgreSQL text cannot hold
    one), encodable as UTF-8, and at most `max_length` characters. The message names `what`
    and never echoes the value."""
    if "\x00" in value:
        raise error(f"{what} contains a NUL character, which cannot be stored")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise error(f"{what} is not valid Unicode text (it holds a lone surrogate)") from None
    if len(value) > max_length:
        raise error(f"{what} is {len(value)} characters long, over the limit of {max_length}")
    return value


def check_reason(reason: str | None) -> None:
    if reason is not None:
        check_text(reason, what="the reason", max_length=REASON_LENGTH)
