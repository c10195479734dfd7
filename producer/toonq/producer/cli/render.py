"""How the CLI prints jobs: JSON for scripts (`--json`), an aligned table for people.

What people read passes through `printable`: idempotency keys, reasons, URIs and error messages
come from callers, and a control character in one (an ESC sequence) would otherwise reach the
terminal. JSON escapes them itself.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from toonq.producer.watching import WaitTimeoutError
from toonq.shared.errors import ToonqError
from toonq.shared.job import Job, JobEvent, JobStatus
from toonq.shared.recovery import Backlog, Recovered

#: `submit --wait` and `watch` exit with this when a job is unfinished at the timeout, like
#: timeout(1).
EXIT_TIMEOUT = 124

_COLUMNS = ("id", "status", "attempts", "error_code", "input_uri", "output_uri")

#: C0 controls, DEL and C1 controls: ESC and CSI among them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with its control characters written as escapes (`\\x1b`), newlines too unless
    `keep_newlines`."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def echo_error(exc: ToonqError) -> None:
    """`error [code]: message` on stderr. toonq's own messages may span lines."""
    click.echo(f"error [{exc.code}]: {printable(str(exc), keep_newlines=True)}", err=True)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def print_jobs_table(jobs: Sequence[Job]) -> None:
    if not jobs:
        click.echo("no jobs")
        return
    rows = [[_cell(job.to_dict().get(column)) for column in _COLUMNS] for job in jobs]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def print_webhooks_table(jobs: Sequence[Job]) -> None:
    """Jobs and their failed webhook: where it went and its last attempt's problem."""
    if not jobs:
        click.echo("no failed webhooks")
        return
    for job in jobs:
        click.echo(
            f"{job.id}  {job.status:<9}  {job.webhook_id}  attempts {job.webhook_attempts}  "
            f"{job.callback_url}"
        )


def job_line(job: Job) -> str:
    """The job as one line: where its output goes, or, once it failed, why."""
    if job.status == JobStatus.FAILED:
        return f"{job.id} {job.status} [{job.error_code}] {printable(job.error_message or '')}"
    if job.status == JobStatus.CANCELLED:
        return f"{job.id} {job.status}"
    return f"{job.id} {job.status} {printable(job.output_uri)}"


def print_as_they_finish(jobs: Iterator[Job], line: Callable[[Job], str]) -> int:
    """Print each job's `line` as it finishes. The exit status: 0 once all succeeded, 1 if one
    failed or was cancelled, EXIT_TIMEOUT at the timeout (the error, on stderr, names the
    unfinished ones)."""
    exit_status = 0
    try:
        for job in jobs:
            click.echo(line(job))
            if job.status != JobStatus.SUCCEEDED:
                exit_status = 1
    except WaitTimeoutError as exc:
        echo_error(exc)
        exit_status = EXIT_TIMEOUT
    return exit_status


def print_job_detail(job: Job, events: Sequence[JobEvent]) -> None:
    for key, value in job.to_dict().items():
        if value not in (None, {}, []):
            click.echo(f"{key + ':':<16}{_cell(value)}")
    if events:
        click.echo("history:")
        for event in events:
            reason = f"  ({printable(event.reason)})" if event.reason else ""
            actor = printable(event.actor)
            click.echo(f"  {event.at.isoformat()}  {event.kind:<10} by {actor}{reason}")


def print_recovery(
    recovered: Sequence[Recovered], forced: int, left: Backlog, *, as_json: bool
) -> None:
    """What a recovery pass sent (`forced` of them by --force), what is still waiting, and when
    recovery becomes due for those whose message is not in the queue."""
    by_reason = Counter(str(item.reason) for item in recovered)
    next_due, last_due = (left.due[0], left.due[-1]) if left.due else (None, None)
    if as_json:
        print_json(
            {
                "recovered": len(recovered),
                "by_status": dict(Counter(str(item.job.status) for item in recovered)),
                "by_reason": dict(by_reason),
                "forced": forced,
                "waiting": left.by_status,
                "in_queue": left.in_queue,
                "held": left.held,
                "next_due_at": None if next_due is None else next_due.isoformat(),
                "last_due_at": None if last_due is None else last_due.isoformat(),
            }
        )
        return
    detail = ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items()))
    click.echo(f"re-sent {len(recovered)} job(s)" + (f": {detail}" if detail else ""))
    if not left.by_status:
        return
    waiting = ", ".join(f"{n} {status}" for status, n in left.by_status.items())
    in_queue = "" if left.in_queue is None else f" ({left.in_queue} with a message in the queue)"
    click.echo(f"still waiting: {waiting}{in_queue}")
    if left.held:
        click.echo(f"{left.held} queued job(s) held for their tenant's turn (sent as it comes)")
    if next_due is not None and last_due is not None:
        others = "the others" if left.in_queue else "they"
        span = (
            _when(next_due) if next_due == last_due else f"{_when(next_due)} to {_when(last_due)}"
        )
        click.echo(
            f"if no worker takes them, {others} are sent again when due: {span} "
            "(`toonq recover --force` sends the queued ones now)"
        )


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{printable(str(k))}={printable(str(v))}" for k, v in value.items())
    return printable(str(value))
