"""Sticker parameters: `preset`, `trim`, `margin`, `outline`, `shadow`, `temporal_smoothing`.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Each column's server default is what every existing job did: no preset, no trim, margin or
outline, no shadow, and smoothing on (a still ignores it). The defaults stay, so that a
producer of the previous release, which names none of the columns, can still insert jobs while
workers and producers are rolled.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRESETS = ("telegram", "line", "discord")
_COLUMNS = ("preset", "trim", "margin", "outline", "shadow", "temporal_smoothing")


def upgrade() -> None:
    # Plain SQL: SQLite adds a column with its CHECK constraint, but not a constraint later.
    op.execute(
        "ALTER TABLE jobs ADD COLUMN preset VARCHAR(16) CONSTRAINT ck_jobs_preset"
        f" CHECK (preset IN ({', '.join(repr(preset) for preset in PRESETS)}))"
    )
    op.add_column(
        "jobs", sa.Column("trim", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    for pixels in ("margin", "outline"):
        op.execute(
            f"ALTER TABLE jobs ADD COLUMN {pixels} INTEGER DEFAULT '0' NOT NULL"
            f" CONSTRAINT ck_jobs_{pixels}_nonnegative CHECK ({pixels} >= 0)"
        )
    op.add_column(
        "jobs", sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column(
        "jobs",
        sa.Column("temporal_smoothing", sa.Boolean(), nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): batch mode would copy `jobs`, whose
    # replacement cascades to every job's history. Each column's CHECK goes with it.
    for column in reversed(_COLUMNS):
        op.drop_column("jobs", column)
