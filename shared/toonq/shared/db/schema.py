"""The database schema: a job table and its append-only event history.

The rows map onto the job model of `toonq.shared.job`: a job's parameter columns onto
`JobParams`, its status and its events' kinds onto `JobStatus` and `EventKind`. The models stay
portable between PostgreSQL (production) and SQLite (the embedded default), so
they use only generic types: `Uuid`, `JSON`, VARCHAR-backed enums guarded by CHECK constraints.
Every constraint gets its name from `NAMING_CONVENTION`, which keeps Alembic migrations
deterministic. The schema is created by the migrations in `toonq.migrations`, never by
`create_all`; `tests/integration/test_migrations.py` checks that both agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, composite, mapped_column

from toonq.shared.choices import MAX_PRIORITY, MIN_PRIORITY, OUTPUT_FORMATS, PRESETS
from toonq.shared.job import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_TENANT_LENGTH,
    EventKind,
    JobParams,
    JobStatus,
    WebhookState,
)

#: The longest worker name, actor, model name and model revision a row holds.
NAME_LENGTH: Final = 255

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no time zones: it stores the wall-clock text and reads back naive datetimes. Binding
    everything as UTC and tagging what comes back as UTC keeps comparisons and snapshots right on
    both backends.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: toonq stores aware UTC datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _enum_values(enum: type[StrEnum]) -> list[str]:
    # Store the lower-case values ("queued"), not the member names ("QUEUED").
    return [member.value for member in enum]


def _string_enum(enum: type[StrEnum], name: str) -> Enum:
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=_enum_values,
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class JobRow(Base):
    """One matting job. PostgreSQL (or the SQLite file) is the source of truth for its status."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created_at", "status", "created_at"),
        # Each release counts a tenant's jobs sent and running, and picks its held ones.
        Index("ix_jobs_tenant_status", "tenant", "status"),
        # Each submit looks its output URIs up. A hash index: a B-tree's entries are limited to
        # a third of a page, and a file URI has no length limit.
        Index("ix_jobs_output_uri", "output_uri", postgresql_using="hash"),
        # The webhooks due: a small set, whatever the number of jobs.
        Index(
            "ix_jobs_webhook_due",
            "webhook_next_at",
            postgresql_where=text("webhook_state = 'pending'"),
            sqlite_where=text("webhook_state = 'pending'"),
        ),
        CheckConstraint(
            f"output_format IN ({', '.join(repr(f) for f in OUTPUT_FORMATS)})",
            name="output_format",
        ),
        CheckConstraint(
            f"priority BETWEEN {MIN_PRIORITY} AND {MAX_PRIORITY}", name="priority_range"
        ),
        CheckConstraint("resolution > 0", name="resolution_positive"),
        CheckConstraint(f"preset IN ({', '.join(repr(p) for p in PRESETS)})", name="preset"),
        # No upper bounds: JobParams checks them, and raising one needs no migration.
        CheckConstraint("margin >= 0", name="margin_nonnegative"),
        CheckConstraint("outline >= 0", name="outline_nonnegative"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    idempotency_key: Mapped[str | None] = mapped_column(
        String(MAX_IDEMPOTENCY_KEY_LENGTH), unique=True
    )
    status: Mapped[JobStatus] = mapped_column(_string_enum(JobStatus, "job_status"))
    input_uri: Mapped[str] = mapped_column(Text)
    output_uri: Mapped[str] = mapped_column(Text)
    # One column per field of JobParams, in its order.
    params: Mapped[JobParams] = composite(
        Column("bg_color", String(32), nullable=False),
        Column("output_format", String(8), nullable=False),
        Column("resolution", Integer, nullable=False),
        Column("refine_foreground", Boolean, nullable=False),
        Column("mask_only", Boolean, nullable=False),
        # Rows written before this column existed read as false, what their jobs did.
        Column("respect_input_alpha", Boolean, nullable=False, server_default=false()),
        # The sticker parameters: rows from before read as what their jobs did, none of it.
        Column("preset", String(16)),
        Column("trim", Boolean, nullable=False, server_default=false()),
        Column("margin", Integer, nullable=False, server_default="0"),
        Column("outline", Integer, nullable=False, server_default="0"),
        Column("shadow", Boolean, nullable=False, server_default=false()),
        Column("temporal_smoothing", Boolean, nullable=False, server_default=true()),
    )
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64), index=True)
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    model_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    model_revision: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    image_width: Mapped[int | None] = mapped_column(Integer)
    image_height: Mapped[int | None] = mapped_column(Integer)
    # Stage name -> milliseconds, e.g. {"download": 41.2, "inference": 380.0}.
    timings: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # When a retrying job is due again.
    next_attempt_at: Mapped[datetime | None]
    # When a running job's claim is considered lost (its worker died without reporting).
    lease_expires_at: Mapped[datetime | None]
    # When the wake-up message for the current queued/retrying state was handed to the broker;
    # NULL while none was sent, so that recovery can tell an unsent job from a waiting one.
    sent_at: Mapped[datetime | None]
    # When a wake-up message was last handed to the broker, kept after the claim: what
    # operators read as "enqueued at".
    enqueued_at: Mapped[datetime | None]
    # The webhook outbox: a finished job with a callback URL is due a POST. Written with the
    # outcome, in its statement, so that no outcome goes unannounced.
    callback_url: Mapped[str | None] = mapped_column(Text)
    webhook_id: Mapped[str | None] = mapped_column(String(64))
    webhook_state: Mapped[WebhookState | None] = mapped_column(
        _string_enum(WebhookState, "webhook_state")
    )
    webhook_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    webhook_next_at: Mapped[datetime | None]
    # The attempt-specific object an attempt committed as the job's output, and what its success
    # records (model, image size, timings): set once while running, kept until it is published.
    staged_output_uri: Mapped[str | None] = mapped_column(Text)
    staged_result: Mapped[dict[str, Any] | None]
    # Whose job it is (`toonq.shared.tenants`); NULL for a job of no tenant.
    tenant: Mapped[str | None] = mapped_column(String(MAX_TENANT_LENGTH))
    # What a success published (`OutputRecord`): content type, frames, a preset's changes.
    output: Mapped[dict[str, Any] | None]


class JobEventRow(Base):
    """One transition of a job; rows are only ever inserted."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(
        # SQLite only autoincrements an INTEGER PRIMARY KEY.
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )
    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime]
    kind: Mapped[EventKind] = mapped_column(_string_enum(EventKind, "event_kind"))
    # A worker name, "producer" or "cli:<user>@<host>".
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None]
