"""`toonq submit` for many images: several URIs, a list (`--from`), folders (`--recursive`).

Every URI is gathered and validated before anything is written: one bad URI is an error that
names where it came from (exit 2), and nothing is submitted. Then the jobs are submitted in
batches, each job's line printed once its batch is in the queue (with `--wait`, once the job
finished).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from toonq.producer.bulk import Source, expand, idempotency_key, located, unique
from toonq.producer.cli.context import Context
from toonq.producer.cli.render import echo_error, job_line, print_as_they_finish
from toonq.producer.client import SubmitRequest, Submitted
from toonq.shared.errors import InvalidRequestError, PermanentJobError, ToonqError
from toonq.shared.job import Job
from toonq.shared.storage import UriPolicy

#: Jobs created per transaction.
BATCH_SIZE = 500

#: A URI, a list or a parameter that cannot be submitted: nothing was written.
EXIT_INVALID = 2


def submit_bulk(
    ctx: Context,
    sources: Sequence[Source],
    *,
    recursive: bool,
    idempotency_prefix: str | None,
    options: dict[str, Any],
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Submit a job per URI of `sources` (with `recursive`, per image under each folder of
    them), each a `SubmitRequest` with `options`; with `wait`, print each job once it finished
    and exit as `toonq watch` does."""
    try:
        requests = _validated(ctx, sources, recursive, idempotency_prefix, options)
    except (InvalidRequestError, PermanentJobError) as exc:
        echo_error(exc)
        sys.exit(EXIT_INVALID)
    with _progress(len(requests)) as advance:

        def print_batch(batch: Sequence[Submitted]) -> None:
            if not wait:
                for item in batch:
                    click.echo(_job_line(item.job, item.created, as_json=as_json))
            advance(len(batch))

        submitted = ctx.client.submit_in_batches(
            requests, batch_size=BATCH_SIZE, on_batch=print_batch
        )
    new = sum(item.created for item in submitted)
    click.echo(
        f"submitted {len(submitted)} job(s): {new} new, {len(submitted) - new} already there",
        err=True,
    )
    if wait:
        created = {item.job.id: item.created for item in submitted}
        finished = ctx.client.wait_all(created, timeout=timeout)
        exit_status = print_as_they_finish(
            finished, lambda job: _job_line(job, created[job.id], as_json=as_json)
        )
        if exit_status:
            sys.exit(exit_status)


def _validated(
    ctx: Context,
    sources: Sequence[Source],
    recursive: bool,
    idempotency_prefix: str | None,
    options: dict[str, Any],
) -> list[SubmitRequest]:
    if recursive:
        expansion = expand(sources, ctx.client.objects, UriPolicy.from_settings(ctx.settings))
        for prefix, count in sorted(expansion.outputs_skipped.items()):
            click.echo(
                f"note: skipped {count} object(s) under the output prefix {prefix}: "
                "jobs do not read what jobs write",
                err=True,
            )
        if not expansion.images:
            folders = ", ".join(source.uri for source in sources)
            raise InvalidRequestError(f"nothing to submit: no images under {folders}")
        sources = expansion.images
    requests: list[SubmitRequest] = []
    for source in unique(sources):
        key = idempotency_prefix and idempotency_key(idempotency_prefix, source.uri)
        request = SubmitRequest(source.uri, idempotency_key=key, **options)
        try:
            ctx.client.validate(request)
        except ToonqError as exc:
            raise located(exc, source.origin) from exc
        requests.append(request)
    if not requests:
        raise InvalidRequestError("nothing to submit: no URIs in the arguments or the list")
    return requests


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr, where a person watches it and the job lines go elsewhere
    (stdout redirected); else nothing, since the job lines show the progress themselves."""
    if not sys.stderr.isatty() or sys.stdout.isatty():
        yield lambda done: None
        return
    with click.progressbar(length=total, label="submitting", file=sys.stderr) as bar:
        yield bar.update


def _job_line(job: Job, created: bool, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(job.to_dict() | {"created": created})
    return job_line(job)
