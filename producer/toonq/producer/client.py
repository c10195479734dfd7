"""The Python API the sticker backend calls. It needs no GPU and never imports torch.

    from toonq.producer import ToonqClient

    client = ToonqClient()  # configured from TOONQ_* and AWS_* variables
    job = client.submit("s3://stickers/in/42.png", idempotency_key="sticker-42")
    job = client.wait(job.id, timeout=60)
    job.status, job.output_uri

A submit writes the job row (the source of truth) and then sends a message carrying only the job
id. Input is validated before anything is written.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Unpack

from celery import Celery

from toonq.producer import watching
from toonq.producer.validation import InputValidator
from toonq.shared.choices import OutputFormat, Preset, check_resolution
from toonq.shared.db.engine import create_db_engine
from toonq.shared.errors import ConfigurationError, InvalidRequestError
from toonq.shared.job import (
    Job,
    JobEvent,
    JobFilters,
    JobParams,
    JobSpec,
    JobStatus,
    check_idempotency_key,
)
from toonq.shared.jobstore import JobStore, RequeueResult, SqlJobStore
from toonq.shared.queue import create_celery_app
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import ObjectStore, UriPolicy, open_store
from toonq.shared.tenants import TenantLimits
from toonq.shared.text import check_reason
from toonq.shared.webhooks import CallbackPolicy


@dataclass(frozen=True)
class SubmitRequest:
    """One job to submit; the fields mirror `ToonqClient.submit`'s arguments. Its parameters
    become a job's `JobParams`, with the settings' colour and resolution where it names none."""

    input_uri: str
    output_uri: str | None = None
    idempotency_key: str | None = None
    bg_color: str | None = None
    format: OutputFormat = "png"
    resolution: int | None = None
    refine_foreground: bool = False
    mask_only: bool = False
    respect_input_alpha: bool = False
    preset: Preset | None = None
    trim: bool = False
    margin: int = 0
    outline: int = 0
    shadow: bool = False
    temporal_smoothing: bool = True
    priority: int = 0
    callback_url: str | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class Submitted:
    """A job that a submit returned: `created` by it, or found by its idempotency key."""

    job: Job
    created: bool


class ToonqClient:
    """Submit, inspect and administer matting jobs."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        actor: str = "producer",
        objects: ObjectStore | None = None,
        store: JobStore | None = None,
        app: Celery | None = None,
    ) -> None:
        """A client for `settings` (default: from the environment). The job store, object store
        and Celery app are built from them unless given (e.g. test doubles); `close` releases
        only what the client built."""
        self.settings = settings or Settings.from_env()
        self.actor = actor
        self._owned = ExitStack()
        if store is None:
            database = create_db_engine(
                self.settings.database_url,
                statement_timeout_s=self.settings.db_statement_timeout_s,
            )
            self._owned.callback(database.dispose)
            store = SqlJobStore(database)
        self.store: JobStore = store
        # One request per S3 call: a submit then waits at most TOONQ_S3_CONNECT_TIMEOUT_S +
        # TOONQ_S3_READ_TIMEOUT_S for S3 before failing with storage_unavailable, which its
        # caller may retry, instead of that wait times TOONQ_S3_MAX_ATTEMPTS.
        self.objects = objects or open_store(self.settings, max_attempts=1)
        if app is None:
            app = create_celery_app(self.settings)
            self._owned.callback(app.close)
        self.sender = Sender(
            app, self.store, queue=self.settings.queue, tenants=TenantLimits.of(self.settings)
        )
        self._validator = InputValidator(self.objects, UriPolicy.from_settings(self.settings))
        self._callbacks = CallbackPolicy.of(self.settings.webhook_allowed_hosts)

    def close(self) -> None:
        """Release the database and broker connections the client opened."""
        self._owned.close()

    def __enter__(self) -> ToonqClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- submitting -----------------------------------------------------------------------------

    def submit(
        self,
        input_uri: str,
        *,
        output_uri: str | None = None,
        idempotency_key: str | None = None,
        bg_color: str | None = None,
        format: OutputFormat = "png",
        resolution: int | None = None,
        refine_foreground: bool = False,
        mask_only: bool = False,
        respect_input_alpha: bool = False,
        preset: Preset | None = None,
        trim: bool = False,
        margin: int = 0,
        outline: int = 0,
        shadow: bool = False,
        temporal_smoothing: bool = True,
        priority: int = 0,
        callback_url: str | None = None,
        tenant: str | None = None,
    ) -> Job:
        """Create a job and enqueue it (a `tenant`'s job once its tenant's turn comes:
        `toonq.shared.tenants`). With an `idempotency_key` already used by a job with the same
        parameters, return that job and enqueue nothing. With a `callback_url`, the job's
        outcome is POSTed there, signed with `TOONQ_WEBHOOK_SECRET`."""
        (job,) = self.submit_many(
            [
                SubmitRequest(
                    input_uri=input_uri,
                    output_uri=output_uri,
                    idempotency_key=idempotency_key,
                    bg_color=bg_color,
                    format=format,
                    resolution=resolution,
                    refine_foreground=refine_foreground,
                    mask_only=mask_only,
                    respect_input_alpha=respect_input_alpha,
                    preset=preset,
                    trim=trim,
                    margin=margin,
                    outline=outline,
                    shadow=shadow,
                    temporal_smoothing=temporal_smoothing,
                    priority=priority,
                    callback_url=callback_url,
                    tenant=tenant,
                )
            ]
        )
        return job

    def submit_many(self, requests: Iterable[SubmitRequest]) -> builtins.list[Job]:
        """Validate every request first (one bad request rejects the whole call, before any
        row is written), then create the jobs in one transaction and enqueue the new ones."""
        return [item.job for item in self._create([self._spec(r) for r in requests])]

    def submit_in_batches(
        self,
        requests: Iterable[SubmitRequest],
        *,
        batch_size: int = 500,
        on_batch: Callable[[Sequence[Submitted]], None] | None = None,
    ) -> builtins.list[Submitted]:
        """`submit_many` for more requests than one transaction should hold: every request is
        validated first (one bad request rejects them all, before any row is written), then
        each `batch_size` of them are created in a transaction of their own, and `on_batch`
        receives each batch's jobs once they are enqueued. A failure in a later batch (an
        idempotency conflict, a lost database) leaves the earlier batches submitted."""
        if batch_size < 1:
            raise InvalidRequestError(f"batch_size must be at least 1, got {batch_size}")
        specs = [self._spec(request) for request in requests]
        submitted: builtins.list[Submitted] = []
        for start in range(0, len(specs), batch_size):
            batch = self._create(specs[start : start + batch_size])
            submitted += batch
            if on_batch is not None:
                on_batch(batch)
        return submitted

    def validate(self, request: SubmitRequest) -> None:
        """Raise the error that submitting `request` would raise before writing anything."""
        self._spec(request)

    def _create(self, specs: builtins.list[JobSpec]) -> builtins.list[Submitted]:
        created = self.store.create_many(specs, actor=self.actor)
        # A job found by its idempotency key whose message was never sent gets it now.
        self.sender.dispatch(
            job
            for job, is_new in created
            if is_new or (job.status == JobStatus.QUEUED and job.sent_at is None)
        )
        # Read back once for all: sending wrote the jobs' `sent_at`.
        current = {job.id: job for job in self.store.get_many(job.id for job, _ in created)}
        return [Submitted(current.get(job.id, job), is_new) for job, is_new in created]

    def _spec(self, request: SubmitRequest) -> JobSpec:
        check_idempotency_key(request.idempotency_key)
        self._validator.check_input(request.input_uri)
        params = JobParams.with_defaults(
            self.settings,
            bg_color=request.bg_color,
            format=request.format,
            resolution=request.resolution,
            refine_foreground=request.refine_foreground,
            mask_only=request.mask_only,
            respect_input_alpha=request.respect_input_alpha,
            preset=request.preset,
            trim=request.trim,
            margin=request.margin,
            outline=request.outline,
            shadow=request.shadow,
            temporal_smoothing=request.temporal_smoothing,
        )
        check_resolution(params.resolution, self.settings.max_resolution)
        job_id = _job_id(request.idempotency_key)
        output_uri = self._validator.check_output(
            request.output_uri or f"{self.settings.output_prefix}/{job_id}.{params.format}"
        )
        return JobSpec(
            id=job_id,
            input_uri=request.input_uri,
            output_uri=output_uri,
            params=params,
            priority=request.priority,
            max_attempts=self.settings.max_attempts,
            idempotency_key=request.idempotency_key,
            callback_url=self._check_callback(request.callback_url),
            tenant=request.tenant,
        )

    def _check_callback(self, url: str | None) -> str | None:
        if url is None:
            return None
        if self.settings.webhook_secret is None:
            raise ConfigurationError(
                "a callback URL needs TOONQ_WEBHOOK_SECRET (whsec_...) to sign its webhooks"
            )
        self._callbacks.check(url)
        return url

    # --- reading --------------------------------------------------------------------------------

    def resolve(self, job_id: uuid.UUID | str) -> uuid.UUID:
        """The id of the job `job_id` names: a full id, or a unique prefix of at least 8 hex
        digits. Every method taking a job id accepts either."""
        return self.store.resolve(job_id)

    def get(self, job_id: uuid.UUID | str) -> Job:
        return self.store.get(self.resolve(job_id))

    def events(self, job_id: uuid.UUID | str) -> builtins.list[JobEvent]:
        return self.store.events(self.resolve(job_id))

    def list(self, **filters: Unpack[JobFilters]) -> builtins.list[Job]:
        """Jobs newest first: `status`, `error_code`, created at or after `since`, `limit`."""
        return self.store.list(**filters)

    def wait(
        self, job_id: uuid.UUID | str, *, timeout: float | None = None, poll_interval: float = 0.5
    ) -> Job:
        """Return the job once it is finished (succeeded, failed or cancelled); raises
        `WaitTimeoutError` after `timeout` seconds. On PostgreSQL it returns as soon as the job
        finishes (LISTEN/NOTIFY); elsewhere it reads the job every `poll_interval` seconds."""
        (job,) = self.wait_all([job_id], timeout=timeout, poll_interval=poll_interval)
        return job

    def wait_all(
        self,
        job_ids: Iterable[uuid.UUID | str],
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
    ) -> Iterator[Job]:
        """Each of the jobs as soon as it is finished, those finished already first, as `wait`
        does for one; `WaitTimeoutError` (naming the unfinished ones) after `timeout`."""
        resolved = [self.resolve(job_id) for job_id in job_ids]
        return watching.until_finished(
            self.store, resolved, timeout=timeout, poll_interval=poll_interval
        )

    def watch(self, *, timeout: float | None = None, poll_interval: float = 0.5) -> Iterator[Job]:
        """Every job that finishes once the iteration has started, as it does, for `timeout`
        seconds (for ever when None)."""
        return watching.as_they_finish(self.store, timeout=timeout, poll_interval=poll_interval)

    # --- administering --------------------------------------------------------------------------

    def cancel(self, job_id: uuid.UUID | str, *, reason: str | None = None) -> Job:
        """Cancel a job that has not finished. A running job's result is discarded. A job
        cancelled already raises `AlreadyCancelledError` (an `InvalidTransitionError`)."""
        check_reason(reason)
        return self.store.cancel(self.resolve(job_id), actor=self.actor, reason=reason)

    def failed_webhooks(self, *, limit: int = 100) -> builtins.list[Job]:
        """Jobs whose last outcome's webhook failed every attempt, most recent first."""
        return self.store.failed_webhooks(limit=limit)

    def resend_webhooks(self, job_ids: Iterable[uuid.UUID | str]) -> builtins.list[Job]:
        """Deliver again, with fresh attempts and the same `webhook-id`, the failed webhooks
        of these jobs; returns those resent (a job whose webhook had not failed is not)."""
        return self.store.resend_webhooks([self.resolve(job_id) for job_id in job_ids])

    def requeue(
        self,
        job_ids: Sequence[uuid.UUID | str] | None = None,
        *,
        status: JobStatus | str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        all: bool = False,
        include_permanent: bool = False,
        dry_run: bool = False,
        reason: str | None = None,
    ) -> RequeueResult:
        """Put failed (or cancelled) jobs back in the queue with fresh attempts: the given ids,
        every job matching the filters (`status`, failed unless given; `error_code`; `since`),
        or with `all` every failed job; a call naming none of these is refused. Filters and
        `all` skip jobs that failed permanently unless `include_permanent`. With `dry_run`,
        report what would be requeued and skipped."""
        check_reason(reason)
        result = self.store.requeue(
            None if job_ids is None else [self.resolve(job_id) for job_id in job_ids],
            status=status,
            error_code=error_code,
            since=since,
            all=all,
            include_permanent=include_permanent,
            actor=self.actor,
            reason=reason,
            dry_run=dry_run,
        )
        if not dry_run:
            self.sender.dispatch(result.requeued)
        return result


#: Namespace of the job ids derived from idempotency keys.
_IDEMPOTENCY_NAMESPACE = uuid.UUID("5f0f6b1e-3d1c-4a8e-9a57-7d0f3c0b9e21")


def _job_id(idempotency_key: str | None) -> uuid.UUID:
    """A fresh id, or for an idempotency key always the same one, so that a resubmit also
    derives the same default output URI (`TOONQ_OUTPUT_PREFIX/<id>.png`)."""
    if idempotency_key is None:
        return uuid.uuid4()
    return uuid.uuid5(_IDEMPOTENCY_NAMESPACE, idempotency_key)
