"""A job may cap its output alpha at its input's: `respect_input_alpha`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

A new parameter column, false on every existing row: what those jobs did. The server default
stays, so that a producer of the previous release, which does not name the column, can still
insert jobs while workers and producers are rolled.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("respect_input_alpha", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # SQLite drops a column in place since 3.35; batch mode would copy `jobs`, whose
    # replacement cascades to every job's history.
    op.drop_column("jobs", "respect_input_alpha")
