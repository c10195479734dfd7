"""What a job's output is: `output` (content type, frames, what a preset changed).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

A success now records the file it published: its content type (a preset may write a WebM video),
its frame count (an animation's), and what fitting it to its preset changed. NULL on the jobs
that succeeded before: nothing was recorded of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("output", sa.JSON(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column in place since 3.35; batch mode would copy `jobs`.
    op.drop_column("jobs", "output")
