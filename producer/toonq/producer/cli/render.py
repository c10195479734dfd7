"""How the CLI prints jobs: JSON for scripts (`--json`), an aligned table for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from toonq.shared.job import Job, JobEvent

_COLUMNS = ("id", "status", "attempts", "error_code", "input_uri", "output_uri")


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


def print_job_detail(job: Job, events: Sequence[JobEvent]) -> None:
    for key, value in job.to_dict().items():
        if value not in (None, {}, []):
            click.echo(f"{key + ':':<16}{_cell(value)}")
    if events:
        click.echo("history:")
        for event in events:
            reason = f"  ({event.reason})" if event.reason else ""
            click.echo(f"  {event.at.isoformat()}  {event.kind:<10} by {event.actor}{reason}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
