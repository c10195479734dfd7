"""`enqueued_at` kept once a job is claimed; the recovery marker becomes `sent_at`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

`enqueued_at` meant "the message for the current waiting state was sent" and was cleared by the
claim, so a running or finished job read `enqueued_at: null`. That marker, which recovery reads,
is now `sent_at`; `enqueued_at` says when a message was last handed to the broker and stays.
Rows keep what they had: the marker moves, and `enqueued_at` starts from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # RENAME COLUMN is plain SQL on PostgreSQL and on SQLite (3.25+), without copying the table.
    op.execute("ALTER TABLE jobs RENAME COLUMN enqueued_at TO sent_at")
    op.add_column("jobs", sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET enqueued_at = sent_at")


def downgrade() -> None:
    op.drop_column("jobs", "enqueued_at")
    op.execute("ALTER TABLE jobs RENAME COLUMN sent_at TO enqueued_at")
