"""The job model: what a job asks for, what it is, what happened to it, and the words for each.

`JobParams` is the one definition of a job's matting parameters. The client's requests, the job
row's columns (`toonq.shared.db.schema` maps them onto it), `Job.params` and its JSON, the
engine's input and the options of `toonq submit` and `toonq matte` are all built from it.

`JobStatus` is what a job row holds; `EventKind` is what its history records, each kind leading
to the status it names; `Outcome` is what handling one message did (the worker's metrics label).

Nothing here touches a database: the engine imports this module too.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypedDict

from toonq.shared.choices import (
    MAX_MARGIN,
    MAX_OUTLINE,
    MAX_PRIORITY,
    MAX_RESOLUTION,
    MIN_PRIORITY,
    OUTPUT_FORMATS,
    PRESET_FORMATS,
    PRESETS,
    RESOLUTION_MULTIPLE,
    OutputFormat,
    Preset,
    check_resolution,
)
from toonq.shared.colors import RGB, normalize_color, parse_color
from toonq.shared.errors import IdempotencyConflictError, InvalidRequestError
from toonq.shared.settings import DEFAULT_RESOLUTION
from toonq.shared.text import check_text

if TYPE_CHECKING:
    from toonq.shared.settings import Settings

MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_TENANT_LENGTH = 64


def check_idempotency_key(key: str | None) -> None:
    """InvalidRequestError unless `key` is None or a key the job table can store: 1 to
    MAX_IDEMPOTENCY_KEY_LENGTH characters of valid Unicode, without a NUL."""
    if key is None:
        return
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidRequestError(
            f"an idempotency key must have 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    check_text(key, what="the idempotency key", max_length=MAX_IDEMPOTENCY_KEY_LENGTH)


def check_tenant(tenant: str | None) -> None:
    """InvalidRequestError unless `tenant` is None or a name the job table can store: 1 to
    MAX_TENANT_LENGTH characters of valid Unicode, without a NUL."""
    if tenant is None:
        return
    if not 0 < len(tenant) <= MAX_TENANT_LENGTH:
        raise InvalidRequestError(f"a tenant must have 1 to {MAX_TENANT_LENGTH} characters")
    check_text(tenant, what="the tenant", max_length=MAX_TENANT_LENGTH)


# --- States, events and outcomes ------------------------------------------------------------------


class JobStatus(StrEnum):
    """A job's lifecycle. The values are stored in the database and read by scripts: a contract."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: Waiting for a worker: a claim may start their next attempt.
WAITING_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RETRYING})
CANCELLABLE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.RUNNING})
#: Finished without success: an operator may send them back to the queue.
REQUEUEABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class WebhookState(StrEnum):
    """Where the webhook of a job's last outcome stands. The values are stored."""

    PENDING = "pending"  # due at `webhook_next_at`
    SENT = "sent"  # the receiver answered 2xx
    FAILED = "failed"  # every attempt failed; `toonq webhooks --resend` tries again


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobFilters(TypedDict, total=False):
    """What a listing of jobs selects: a status, an error code, a tenant, jobs created at or
    after `since`, and at most `limit` of them (100 unless given)."""

    status: JobStatus | str | None
    error_code: str | None
    tenant: str | None
    since: datetime | None
    limit: int


def parse_status(value: JobStatus | str) -> JobStatus:
    """`value` as a status; InvalidRequestError names the statuses there are."""
    try:
        return JobStatus(value)
    except ValueError:
        choices = ", ".join(status.value for status in JobStatus)
        raise InvalidRequestError(f"unknown status {value!r}; expected one of {choices}") from None


def aware(value: datetime | None, name: str) -> datetime | None:
    """`value`, refused unless it is timezone-aware (the store compares UTC instants)."""
    if value is not None and value.tzinfo is None:
        raise InvalidRequestError(f"{name} must be a timezone-aware datetime")
    return value


class EventKind(StrEnum):
    """What happened to a job, one row of its history per transition. The values are stored."""

    CREATED = "created"
    STARTED = "started"
    RECLAIMED = "reclaimed"  # a worker took over a running job whose previous worker was lost
    RETRIED = "retried"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"  # an operator sent a failed or cancelled job back to the queue
    HANDED_BACK = "handed_back"  # a stopping worker gave its running job back, attempt unspent
    # The webhook of a finished job (its status stays): an attempt that failed and will be
    # retried, the delivery, or the last attempt failed.
    WEBHOOK_RETRY = "webhook_retry"
    WEBHOOK_SENT = "webhook_sent"
    WEBHOOK_FAILED = "webhook_failed"

    @property
    def status(self) -> JobStatus | None:
        """The status a job has once this happened to it; None where it keeps its own."""
        return _STATUS_AFTER.get(self)


_STATUS_AFTER: Final[Mapping[EventKind, JobStatus]] = MappingProxyType(
    {
        EventKind.CREATED: JobStatus.QUEUED,
        EventKind.STARTED: JobStatus.RUNNING,
        EventKind.RECLAIMED: JobStatus.RUNNING,
        EventKind.RETRIED: JobStatus.RETRYING,
        EventKind.SUCCEEDED: JobStatus.SUCCEEDED,
        EventKind.FAILED: JobStatus.FAILED,
        EventKind.CANCELLED: JobStatus.CANCELLED,
        EventKind.REQUEUED: JobStatus.QUEUED,
        EventKind.HANDED_BACK: JobStatus.QUEUED,
    }
)


class Outcome(StrEnum):
    """What handling one job message did: the status it led the job to, or why it led to none.
    The values are the `status` label of the worker's `toonq_jobs_total`: a contract."""

    SUCCEEDED = JobStatus.SUCCEEDED.value
    FAILED = JobStatus.FAILED.value
    RETRYING = JobStatus.RETRYING.value
    SKIPPED = "skipped"  # not claimable: a duplicate message, or the job is finished/cancelled
    DISCARDED = "discarded"  # the claim was lost (e.g. cancelled) before the outcome was recorded
    REJECTED = "rejected"  # the message names no job
    HANDED_BACK = "handed_back"  # the worker stopped and gave the job back to the queue


# --- What a job asks for --------------------------------------------------------------------------

#: The key of a `JobParams` field's metadata that holds its command-line help.
HELP: Final = "help"


def _param(help: str, **default: Any) -> Any:
    return field(metadata={HELP: help}, **default)


@dataclass(frozen=True)
class JobParams:
    """What a job asks the engine for. Validated when built, so a `JobParams` is always valid;
    each field is also an option of `toonq submit` and `toonq matte` (`--bg-color`...)."""

    #: `#rrggbb`, whatever hex spelling it was given in.
    bg_color: str = _param("Colour RGBA input is composited onto [default: TOONQ_BG_COLOR].")
    format: OutputFormat = _param(  # noqa: RUF009
        "Output format of the cut-out or the mask, webp lossless [default: png]."
    )
    #: The model's input size.
    resolution: int = _param(
        f"Model input size, a multiple of {RESOLUTION_MULTIPLE} up to {MAX_RESOLUTION} "
        f"[default: TOONQ_RESOLUTION, else {DEFAULT_RESOLUTION}]."
    )
    refine_foreground: bool = _param(
        "Estimate clean edge colours (not with --mask-only).", default=False
    )
    mask_only: bool = _param("Write an 8-bit mask instead of the cut-out.", default=False)
    respect_input_alpha: bool = _param(
        "Never let the output alpha (or the mask) exceed the input's: transparent input "
        "stays transparent.",
        default=False,
    )
    # The sticker's finish, for stills and animations alike.
    preset: Preset | None = _param(  # noqa: RUF009
        "Fit the output to a platform's sticker limits (size, frames, duration).", default=None
    )
    trim: bool = _param("Crop to the subject's bounding box plus --margin.", default=False)
    margin: int = _param(
        f"Pixels kept around the trimmed subject, 0 to {MAX_MARGIN} (needs --trim) [default: 0].",
        default=0,
    )
    outline: int = _param(
        f"Width in pixels of a white sticker border around the subject, 0 to {MAX_OUTLINE} "
        "[default: 0].",
        default=0,
    )
    shadow: bool = _param("Add a soft drop shadow.", default=False)
    temporal_smoothing: bool = _param(
        "Steady the edges across an animation's frames; stills ignore it [default: on].",
        default=True,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "bg_color", normalize_color(self.bg_color))
        if self.format not in OUTPUT_FORMATS:
            raise InvalidRequestError(
                f"output format must be one of {', '.join(OUTPUT_FORMATS)}; got {self.format!r}"
            )
        check_resolution(self.resolution)
        if self.refine_foreground and self.mask_only:
            # Refinement estimates the cut-out's colours, and a mask has none: asking for both
            # is a mistake the caller should hear about, not a flag silently ignored.
            raise InvalidRequestError(
                "refine_foreground estimates the cut-out's colours and a mask has none: "
                "ask for mask_only or refine_foreground, not both"
            )
        self._check_sticker()

    def _check_sticker(self) -> None:
        """Refuse sticker parameters that are out of range or contradict the others."""
        if self.preset is not None and self.preset not in PRESETS:
            raise InvalidRequestError(
                f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}"
            )
        _check_pixels("margin", self.margin, MAX_MARGIN)
        _check_pixels("outline", self.outline, MAX_OUTLINE)
        if self.margin and not self.trim:
            raise InvalidRequestError(
                f"margin {self.margin} is kept around the trimmed subject: ask for trim too, "
                "or leave margin at 0"
            )
        finishes = {
            "preset": self.preset is not None,
            "trim": self.trim,
            "outline": self.outline > 0,
            "shadow": self.shadow,
        }
        if self.mask_only and any(finishes.values()):
            asked = " and ".join(name for name, on in finishes.items() if on)
            raise InvalidRequestError(
                "a mask has no colours to outline or shade and is no sticker to trim or fit "
                f"to a platform: ask for mask_only or for {asked}, not both"
            )
        if self.preset is not None and self.format not in PRESET_FORMATS[self.preset]:
            taken = " or ".join(PRESET_FORMATS[self.preset])
            raise InvalidRequestError(
                f"preset {self.preset!r} takes format {taken} only (its stickers are PNG or "
                f"APNG), not {self.format}"
            )

    @classmethod
    def with_defaults(
        cls,
        settings: Settings,
        *,
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
    ) -> JobParams:
        """The parameters of a request, which may leave the colour and the resolution to the
        deployment's settings (`TOONQ_BG_COLOR`, `TOONQ_RESOLUTION`). Only a value left out
        (None) takes the setting: any value given is checked, 0 and "" included."""
        return cls(
            bg_color=settings.bg_color if bg_color is None else bg_color,
            format=format,
            resolution=settings.resolution if resolution is None else resolution,
            refine_foreground=refine_foreground,
            mask_only=mask_only,
            respect_input_alpha=respect_input_alpha,
            preset=preset,
            trim=trim,
            margin=margin,
            outline=outline,
            shadow=shadow,
            temporal_smoothing=temporal_smoothing,
        )

    @property
    def bg_rgb(self) -> RGB:
        return parse_color(self.bg_color)


def _check_pixels(name: str, value: int, maximum: int) -> None:
    """InvalidRequestError unless `value` is a whole number of pixels from 0 to `maximum`."""
    # A bool is an int to Python, and never a width a caller meant.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidRequestError(
            f"{name} must be a whole number of pixels from 0 to {maximum}, got {value!r}"
        )


# --- Jobs and their history -----------------------------------------------------------------------


def iso_utc(value: datetime | None) -> str | None:
    """`value` as ISO 8601 in UTC, as the JSON of jobs and events spells times."""
    return None if value is None else value.astimezone(UTC).isoformat()


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A job to create. Validates what the database constraints would otherwise reject.

    `id` may be chosen by the caller, e.g. to name the output after the job; a job found by its
    idempotency key keeps its own id.
    """

    id: uuid.UUID = field(default_factory=uuid.uuid4)
    input_uri: str
    output_uri: str
    params: JobParams
    priority: int = 0
    max_attempts: int
    idempotency_key: str | None = None
    #: Where the outcome is POSTed (checked by the client against `CallbackPolicy`).
    callback_url: str | None = None
    #: Whose job it is: workers serve the tenants of a priority band in turn.
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise InvalidRequestError(
                f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {self.priority}"
            )
        if self.max_attempts < 1:
            raise InvalidRequestError(f"max_attempts must be >= 1, got {self.max_attempts}")
        check_idempotency_key(self.idempotency_key)
        check_tenant(self.tenant)


@dataclass(frozen=True)
class Job:
    """A snapshot of one job, taken when the store returned it."""

    id: uuid.UUID
    status: JobStatus
    idempotency_key: str | None
    input_uri: str
    output_uri: str
    params: JobParams
    priority: int
    attempts: int
    max_attempts: int
    error_code: str | None
    error_message: str | None
    worker: str | None
    model_name: str | None
    model_revision: str | None
    image_width: int | None
    image_height: int | None
    timings: Mapping[str, float] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    lease_expires_at: datetime | None
    #: When a wake-up message for the job was last handed to the broker (kept once claimed).
    enqueued_at: datetime | None
    callback_url: str | None
    #: The webhook of the job's last outcome: its id (the same for each of its attempts),
    #: where it stands, the attempts made, and when the next is due (None: no outcome yet).
    webhook_id: str | None
    webhook_state: WebhookState | None
    webhook_attempts: int
    webhook_next_at: datetime | None
    #: When the message for the job's current waiting state was sent; None while none is (what
    #: recovery looks for), so cleared by each claim, retry, hand-back, cancel and requeue.
    sent_at: datetime | None
    #: The committed attempt's output, waiting to be published (`staged_output`).
    staged_output_uri: str | None
    staged_result: Mapping[str, Any] | None
    tenant: str | None = None
    #: What the success published: {"content_type", "frames", "changes"} (`StagedOutput`);
    #: None before a success, and for jobs that succeeded before it was recorded.
    output: Mapping[str, Any] | None = None

    @property
    def staged_output(self) -> StagedOutput | None:
        """The output an attempt committed to the job, once its upload was staged: the one
        output the job may publish at its output URI, whichever attempt publishes it."""
        if self.staged_output_uri is None or self.staged_result is None:
            return None
        return StagedOutput.from_record(self.staged_output_uri, self.staged_result)

    @property
    def model(self) -> str | None:
        """The model that produced the output: "name@revision", "name", or None."""
        if self.model_name is None:
            return None
        return (
            f"{self.model_name}@{self.model_revision}" if self.model_revision else self.model_name
        )

    def reuse_for(self, spec: JobSpec) -> Job:
        """This job, found by the idempotency key of `spec`; IdempotencyConflictError, naming
        each parameter that differs, unless `spec` asks for exactly this job."""
        held, asked = _requested(self), _requested(spec)
        differences = [
            f"{name} {asked[name]!r} (the job's: {held[name]!r})"
            for name in held
            if asked[name] != held[name]
        ]
        if differences:
            raise IdempotencyConflictError(
                f"idempotency key {spec.idempotency_key!r} is already used by job {self.id} "
                f"with other parameters: {', '.join(differences)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values: UUIDs as strings, datetimes as ISO 8601 in UTC."""
        image = None
        if self.image_width is not None and self.image_height is not None:
            image = {"width": self.image_width, "height": self.image_height}
        return {
            "id": str(self.id),
            "status": self.status.value,
            "idempotency_key": self.idempotency_key,
            "input_uri": self.input_uri,
            "output_uri": self.output_uri,
            "params": asdict(self.params),
            "priority": self.priority,
            "tenant": self.tenant,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "worker": self.worker,
            "model": self.model,
            "model_name": self.model_name,
            "model_revision": self.model_revision,
            "image": image,
            "timings": None if self.timings is None else dict(self.timings),
            "created_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
            "started_at": iso_utc(self.started_at),
            "finished_at": iso_utc(self.finished_at),
            "next_attempt_at": iso_utc(self.next_attempt_at),
            "lease_expires_at": iso_utc(self.lease_expires_at),
            "enqueued_at": iso_utc(self.enqueued_at),
            "staged_output_uri": self.staged_output_uri,
            "output": None if self.output is None else dict(self.output),
            "callback_url": self.callback_url,
            "webhook": self._webhook(),
        }

    def _webhook(self) -> dict[str, Any] | None:
        if self.callback_url is None or self.webhook_state is None:
            return None
        return {
            "id": self.webhook_id,
            "state": self.webhook_state.value,
            "attempts": self.webhook_attempts,
            "next_attempt_at": iso_utc(self.webhook_next_at),
        }


#: What a job is asked for besides its parameters: an idempotent resubmit repeats all of it.
_REQUESTED_FIELDS: Final = (
    "input_uri",
    "output_uri",
    "priority",
    "tenant",
    "max_attempts",
    "callback_url",
)


def _requested(job: Job | JobSpec) -> dict[str, Any]:
    """Everything `job` asks for, by name: its URIs, each of its parameters, its priority, its
    tenant and its attempts."""
    requested = {name: getattr(job, name) for name in _REQUESTED_FIELDS}
    return requested | asdict(job.params)


@dataclass(frozen=True)
class JobEvent:
    """One row of a job's history."""

    id: int
    job_id: uuid.UUID
    at: datetime
    kind: EventKind
    actor: str
    reason: str | None
    details: Mapping[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_id": str(self.job_id),
            "at": iso_utc(self.at),
            "kind": self.kind.value,
            "actor": self.actor,
            "reason": self.reason,
            "details": None if self.details is None else dict(self.details),
        }


@dataclass(frozen=True, kw_only=True)
class StagedOutput:
    """An attempt's output, uploaded to a key of its own (`uri`) and committed to its job: what
    the job records as its success once the object is copied to the job's output URI."""

    uri: str
    attempt: int
    model_name: str
    model_revision: str | None
    image_width: int
    image_height: int
    timings: Mapping[str, float]
    #: The file: its content type (None in records of older workers), its frames, and what
    #: fitting it to its preset changed.
    content_type: str | None = None
    frames: int = 1
    changes: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """Everything but `uri`, as JSON (the job row's `staged_result`)."""
        return {
            "attempt": self.attempt,
            "model_name": self.model_name,
            "model_revision": self.model_revision,
            "image_width": self.image_width,
            "image_height": self.image_height,
            "timings": dict(self.timings),
            "content_type": self.content_type,
            "frames": self.frames,
            "changes": list(self.changes),
        }

    @classmethod
    def from_record(cls, uri: str, record: Mapping[str, Any]) -> StagedOutput:
        return cls(uri=uri, **{**record, "changes": tuple(record.get("changes", ()))})

    def output(self) -> dict[str, Any] | None:
        """What a job records of the file it published (None where an older worker staged
        it without saying)."""
        if self.content_type is None:
            return None
        return {
            "content_type": self.content_type,
            "frames": self.frames,
            "changes": list(self.changes),
        }


@dataclass(frozen=True)
class Claim:
    """A worker's right to record the outcome of one attempt of a job."""

    job: Job
    attempt: int
    #: Since when the job had waited for this attempt: its retry came due, its message was
    #: sent, or it last changed. None when that is not known.
    waited_since: datetime | None = None

    @property
    def worker(self) -> str:
        assert self.job.worker is not None, "a claimed job always names its worker"
        return self.job.worker


@dataclass(frozen=True)
class NotDue:
    """A claim refused because the job's retry is not due yet (its message came early)."""

    job: Job

    @property
    def due_at(self) -> datetime:
        assert self.job.next_attempt_at is not None, "only a retry can be early"
        return self.job.next_attempt_at
