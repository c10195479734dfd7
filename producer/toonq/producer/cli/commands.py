"""The queue-side commands: they need the producer install only (no torch)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, TextIO

import click

from toonq.producer.bulk import MAX_IDEMPOTENCY_PREFIX_LENGTH as MAX_KEY_PREFIX
from toonq.producer.bulk import Source, from_lines
from toonq.producer.cli.bulk import submit_bulk
from toonq.producer.cli.context import Context, pass_context
from toonq.producer.cli.params import job_params_options
from toonq.producer.cli.render import (
    EXIT_TIMEOUT,
    echo_error,
    job_line,
    print_as_they_finish,
    print_job_detail,
    print_jobs_table,
    print_json,
    print_recovery,
    print_webhooks_table,
    printable,
)
from toonq.producer.watching import WaitTimeoutError
from toonq.shared.choices import MAX_PRIORITY, MIN_PRIORITY
from toonq.shared.db.engine import migrate as run_migrations
from toonq.shared.errors import (
    JOB_ERROR_CODES,
    PERMANENT_ERROR_CODES,
    AlreadyCancelledError,
    InvalidTransitionError,
)
from toonq.shared.job import Job, JobStatus
from toonq.shared.recovery import QueueMessages, backlog, recover_once, resend_queued


def _parse_since(_: click.Context, __: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        since = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 date or datetime: {value!r}") from None
    return since if since.tzinfo else since.astimezone()


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
status_choice = click.Choice([s.value for s in JobStatus])
error_code_choice = click.Choice(sorted(JOB_ERROR_CODES))


@click.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision.")
@pass_context
def migrate(ctx: Context, revision: str) -> None:
    """Upgrade the database schema (PostgreSQL or SQLite)."""
    run_migrations(ctx.settings.database_url, revision)
    click.echo(f"database at {revision}")


@click.command()
@click.argument("input_uris", metavar="URI...", nargs=-1)
@click.option(
    "--from",
    "uri_list",
    type=click.File("r"),
    metavar="FILE",
    help="Also submit the URIs in FILE, one a line ('-': stdin; blank and '#' lines skipped).",
)
@click.option(
    "--recursive",
    is_flag=True,
    help="Take each URI as a folder (s3://bucket/prefix/, file:///folder/) and submit the "
    "images under it.",
)
@click.option("--output", "output_uri", help="Output URI [default: TOONQ_OUTPUT_PREFIX/<id>.png].")
@click.option("--idempotency-key", help="Resubmitting with the same key returns the same job.")
@click.option(
    "--idempotency-prefix",
    metavar="P",
    help="Key each job P:<32 hex digits of its URI's SHA-256>: a re-run submits only what "
    "is missing.",
)
@job_params_options
@click.option(
    "--priority", type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY), default=0, show_default=True
)
@click.option(
    "--callback-url",
    help="POST each job's outcome here (a signed webhook; needs TOONQ_WEBHOOK_SECRET).",
)
@click.option(
    "--tenant", help="Whose jobs these are: workers serve the tenants of a priority band in turn."
)
@click.option("--wait", is_flag=True, help="Wait until the jobs finish.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts (several jobs: a line each)."
)
@pass_context
def submit(
    ctx: Context,
    input_uris: tuple[str, ...],
    uri_list: TextIO | None,
    recursive: bool,
    output_uri: str | None,
    idempotency_key: str | None,
    idempotency_prefix: str | None,
    job_options: dict[str, Any],
    priority: int,
    callback_url: str | None,
    tenant: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Submit a job for each URI (s3://bucket/key or file:///path).

    Exits 0 once submitted (with --wait: once all succeeded), 1 if a job failed or was
    cancelled, 124 if --timeout passed first.

    Several URIs, --from, --recursive or --idempotency-prefix: every URI is checked before
    any job is submitted (exit 2 naming the bad one, nothing submitted), then the jobs are
    submitted in batches; a line per job on stdout once submitted (with --wait: once finished;
    with --json, its JSON and "created"), and how many were new on stderr.
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout is how long --wait waits: give --wait too")
    options = job_options | {
        "priority": priority,
        "callback_url": callback_url,
        "tenant": tenant,
    }
    one = len(input_uris) == 1 and uri_list is None and not recursive
    if one and idempotency_prefix is None:
        _submit_one(
            ctx,
            input_uris[0],
            output_uri=output_uri,
            idempotency_key=idempotency_key,
            options=options,
            wait=wait,
            timeout=timeout,
            as_json=as_json,
        )
        return
    for given, flag in ((output_uri, "--output"), (idempotency_key, "--idempotency-key")):
        if given is not None:
            raise click.UsageError(
                f"{flag} is for one job: with several URIs, --from, --recursive or "
                "--idempotency-prefix, leave it out"
            )
    if not input_uris and uri_list is None:
        raise click.UsageError("submit needs URIs, or --from FILE")
    if idempotency_prefix is not None and not 0 < len(idempotency_prefix) <= MAX_KEY_PREFIX:
        raise click.BadParameter(
            f"must be 1 to {MAX_KEY_PREFIX} characters", param_hint="'--idempotency-prefix'"
        )
    sources = [Source(uri, f"argument {n}") for n, uri in enumerate(input_uris, start=1)]
    if uri_list is not None:
        sources += from_lines(uri_list, "stdin" if uri_list.name == "<stdin>" else uri_list.name)
    submit_bulk(
        ctx,
        sources,
        recursive=recursive,
        idempotency_prefix=idempotency_prefix,
        options=options,
        wait=wait,
        timeout=timeout,
        as_json=as_json,
    )


def _submit_one(
    ctx: Context,
    input_uri: str,
    *,
    output_uri: str | None,
    idempotency_key: str | None,
    options: dict[str, Any],
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    job = ctx.client.submit(
        input_uri, output_uri=output_uri, idempotency_key=idempotency_key, **options
    )
    exit_status = 0
    if wait:
        try:
            job = ctx.client.wait(job.id, timeout=timeout)
        except WaitTimeoutError as exc:
            echo_error(exc)
            job, exit_status = ctx.client.get(job.id), EXIT_TIMEOUT
        else:
            exit_status = 0 if job.status == JobStatus.SUCCEEDED else 1
    if as_json:
        print_json(job.to_dict())
    else:
        click.echo(job_line(job))
    if exit_status:
        sys.exit(exit_status)


@click.command()
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="Give up after this many seconds [default: wait for ever].",
)
@json_option
@pass_context
def watch(ctx: Context, job_ids: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """Print jobs' outcomes as they finish: the JOB_IDs given (those finished already first),
    or else every job that finishes from now on.

    With JOB_IDs, exits 0 once all succeeded, 1 if one failed or was cancelled, 124 if
    --timeout passed first. Without, runs until --timeout (exit 0) or Ctrl-C. --json prints one
    JSON object per line.
    """
    if job_ids:
        jobs = ctx.client.wait_all(job_ids, timeout=timeout)
    else:
        jobs = ctx.client.watch(timeout=timeout)
    exit_status = print_as_they_finish(
        jobs, lambda job: json.dumps(job.to_dict()) if as_json else job_line(job)
    )
    if job_ids and exit_status:
        sys.exit(exit_status)


@click.command()
@click.argument("job_id")
@json_option
@pass_context
def status(ctx: Context, job_id: str, as_json: bool) -> None:
    """Show a job and its history. JOB_ID: a full id or a unique prefix (8+ hex digits)."""
    job = ctx.client.get(job_id)
    events = ctx.client.events(job.id)
    if as_json:
        print_json(job.to_dict() | {"events": [event.to_dict() for event in events]})
    else:
        print_job_detail(job, events)


@click.command()
@click.option("--status", "status_", type=status_choice, help="Only jobs in this status.")
@click.option("--error-code", type=error_code_choice, help="Only jobs that failed with this code.")
@click.option("--tenant", help="Only this tenant's jobs.")
@click.option("--since", callback=_parse_since, help="Only jobs created at or after (ISO 8601).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
@pass_context
def jobs(
    ctx: Context,
    status_: str | None,
    error_code: str | None,
    tenant: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    found = ctx.client.list(
        status=status_, error_code=error_code, tenant=tenant, since=since, limit=limit
    )
    if as_json:
        print_json([job.to_dict() for job in found])
    else:
        print_jobs_table(found)


@click.command()
@click.argument("job_ids", nargs=-1)
@click.option(
    "--status",
    "status_",
    type=click.Choice([JobStatus.FAILED.value, JobStatus.CANCELLED.value]),
    help="Requeue the jobs in this status [default with the other filters: failed].",
)
@click.option("--error-code", type=error_code_choice, help="Requeue jobs failed with this code.")
@click.option("--since", callback=_parse_since, help="Requeue jobs created at or after (ISO 8601).")
@click.option("--all", "all_", is_flag=True, help="Requeue every failed job.")
@click.option(
    "--include-permanent",
    is_flag=True,
    help="With filters or --all: also jobs that failed with a permanent error code "
    f"({', '.join(sorted(PERMANENT_ERROR_CODES))}).",
)
@click.option("--reason", help="Recorded in each job's history.")
@click.option(
    "--dry-run", is_flag=True, help="Show what would be requeued and skipped; change nothing."
)
@json_option
@pass_context
def requeue(
    ctx: Context,
    job_ids: tuple[str, ...],
    status_: str | None,
    error_code: str | None,
    since: datetime | None,
    all_: bool,
    include_permanent: bool,
    reason: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Put failed (or cancelled) jobs back in the queue with fresh attempts: the JOB_IDs given
    (full ids or unique prefixes), the jobs matching the filters, or with --all every failed job.

    Filters and --all skip jobs that failed with a permanent error code (retrying cannot help
    until something is fixed) unless --include-permanent; JOB_IDs are always requeued.
    """
    filters = status_ is not None or error_code is not None or since is not None
    chosen = sum((bool(job_ids), filters, all_))
    if chosen == 0:
        raise click.UsageError(
            "requeue needs JOB_IDs, a filter (--status, --error-code, --since) or --all"
        )
    if chosen > 1:
        raise click.UsageError("give JOB_IDs, filters or --all: only one of them")
    result = ctx.client.requeue(
        list(job_ids) or None,
        status=status_,
        error_code=error_code,
        since=since,
        all=all_,
        include_permanent=include_permanent,
        dry_run=dry_run,
        reason=reason,
    )
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "requeued": [job.to_dict() for job in result.requeued],
                "skipped": [job.to_dict() for job in result.skipped],
            }
        )
        return
    if result.requeued:
        print_jobs_table(result.requeued)
    click.echo(f"{'would requeue' if dry_run else 'requeued'} {len(result.requeued)} job(s)")
    if result.skipped:
        click.echo(
            f"{'would skip' if dry_run else 'skipped'} {len(result.skipped)} job(s) that failed "
            "with a permanent error code (--include-permanent requeues them):"
        )
        print_jobs_table(result.skipped)


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--reason", help="Recorded in each job's history.")
@json_option
@pass_context
def cancel(ctx: Context, job_ids: tuple[str, ...], reason: str | None, as_json: bool) -> None:
    """Cancel the jobs JOB_IDs (full ids or unique prefixes) that have not finished.

    Every id is checked before any job is cancelled. A job cancelled already is left as it is,
    with a note on stderr. Exits 1 if a job had finished (it stays as it is), after cancelling
    the others. With --json: the job's JSON for one id, a list of them for several.
    """
    found = dict.fromkeys(ctx.client.get(job_id).id for job_id in job_ids)  # each once
    cancelled: list[Job] = []
    refused = False
    for job_id in found:
        try:
            cancelled.append(ctx.client.cancel(job_id, reason=reason))
        except AlreadyCancelledError as exc:
            click.echo(f"note: {printable(str(exc))}", err=True)
            cancelled.append(ctx.client.get(job_id))
        except InvalidTransitionError as exc:
            echo_error(exc)
            refused = True
    if as_json:
        # One id prints the job's JSON, as it always did; several print a list.
        if len(found) == 1:
            if cancelled:
                print_json(cancelled[0].to_dict())
        else:
            print_json([job.to_dict() for job in cancelled])
    else:
        for job in cancelled:
            click.echo(f"{job.id} {job.status}")
    if refused:
        sys.exit(1)


@click.command()
@click.option(
    "--force",
    is_flag=True,
    help="Also send now the message of every queued job that has none waiting in the queue "
    "(after Redis lost its data), rather than when it becomes due.",
)
@json_option
@pass_context
def recover(ctx: Context, force: bool, as_json: bool) -> None:
    """Send again the messages of jobs that would otherwise wait for ever: never sent, lost,
    stranded with a dead worker, or of running jobs whose worker stopped renewing its lease
    (every worker also does this periodically). Then say what is still waiting, and when
    recovery becomes due for the jobs whose message is not in the queue."""
    store, sender, messages = ctx.client.store, ctx.client.sender, QueueMessages.of(ctx.settings)
    recovered = recover_once(store, sender, ctx.settings, messages)
    forced = (
        resend_queued(store, sender, messages, skip={r.job.id for r in recovered}) if force else []
    )
    left = backlog(store, ctx.settings, messages, sender)
    print_recovery([*recovered, *forced], len(forced), left, as_json=as_json)


@click.command()
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option("--failed", is_flag=True, help="List the jobs whose webhook failed every attempt.")
@click.option(
    "--resend",
    is_flag=True,
    help="Deliver the JOB_IDs' failed webhooks again (same webhook-id, fresh attempts).",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@pass_context
def webhooks(
    ctx: Context, job_ids: tuple[str, ...], failed: bool, resend: bool, limit: int, as_json: bool
) -> None:
    """List the failed webhooks (--failed), or deliver them again (--resend JOB_ID...)."""
    if failed == resend or failed == bool(job_ids):
        raise click.UsageError("give --failed to list, or --resend JOB_ID... to deliver again")
    if failed:
        jobs = ctx.client.failed_webhooks(limit=limit)
        if as_json:
            print_json([job.to_dict() for job in jobs])
        else:
            print_webhooks_table(jobs)
        return
    resent = ctx.client.resend_webhooks(job_ids)
    resent_ids = {job.id for job in resent}
    skipped = [job_id for job_id in map(ctx.client.resolve, job_ids) if job_id not in resent_ids]
    for job_id in skipped:
        click.echo(f"note: job {job_id}'s webhook has not failed: nothing to resend", err=True)
    if as_json:
        print_json([job.to_dict() for job in resent])
    else:
        for job in resent:
            click.echo(f"{job.id} webhook {job.webhook_id} due again")


#: `recover`'s first name, kept for the scripts that call it: hidden, and it says it is deprecated.
sweep = click.Command(
    "sweep",
    callback=recover.callback,
    params=recover.params,
    help="Deprecated: use `toonq recover`.",
    hidden=True,
    deprecated=True,
)

QUEUE_COMMANDS = (
    migrate,
    submit,
    status,
    watch,
    jobs,
    requeue,
    cancel,
    recover,
    webhooks,
    sweep,
)
