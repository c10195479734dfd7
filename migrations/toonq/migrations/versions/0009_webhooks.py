"""Webhooks: a job's `callback_url`, and the outbox of its outcome's POST on the job row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

The outbox lives in the job's own row (`webhook_id`, `webhook_state`, `webhook_attempts`,
`webhook_next_at`), so that the statement that records an outcome records its webhook too. The
attempts are job events of three new kinds. A partial index keeps finding the webhooks due
cheap whatever the number of jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The kinds the previous revisions allowed, from the revision that set them.
EVENT_KINDS_0002: tuple[str, ...] = import_module(
    "toonq.migrations.versions.0002_handed_back_event"
).EVENT_KINDS
EVENT_KINDS = (*EVENT_KINDS_0002, "webhook_retry", "webhook_sent", "webhook_failed")
_PENDING = sa.text("webhook_state = 'pending'")


def _allow_event_kinds(kinds: Sequence[str]) -> None:
    # SQLite cannot alter a constraint: batch mode copies the table under the new one.
    with op.batch_alter_table("job_events") as batch:
        batch.drop_constraint(op.f("ck_job_events_event_kind"), type_="check")
        batch.create_check_constraint(
            op.f("ck_job_events_event_kind"),
            f"kind IN ({', '.join(repr(kind) for kind in kinds)})",
        )


def upgrade() -> None:
    op.add_column("jobs", sa.Column("callback_url", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("webhook_id", sa.String(64), nullable=True))
    # Plain SQL: SQLite adds a column with its CHECK constraint, but not a constraint later.
    op.execute(
        "ALTER TABLE jobs ADD COLUMN webhook_state VARCHAR(16) CONSTRAINT ck_jobs_webhook_state"
        " CHECK (webhook_state IN ('pending', 'sent', 'failed'))"
    )
    op.add_column(
        "jobs",
        sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("jobs", sa.Column("webhook_next_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        op.f("ix_jobs_webhook_due"),
        "jobs",
        ["webhook_next_at"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    _allow_event_kinds(EVENT_KINDS)


def downgrade() -> None:
    op.execute(
        "DELETE FROM job_events WHERE kind IN ('webhook_retry', 'webhook_sent', 'webhook_failed')"
    )
    _allow_event_kinds(EVENT_KINDS_0002)
    op.drop_index(op.f("ix_jobs_webhook_due"), table_name="jobs")
    for column in ("webhook_next_at", "webhook_attempts", "webhook_state", "webhook_id"):
        op.drop_column("jobs", column)
    op.drop_column("jobs", "callback_url")
