"""A job's committed output: the attempt-specific object an attempt staged, and its success.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

An attempt uploads its output under a key of its own, then commits it to the job with a
compare-and-set on its claim (`staged_output_uri`, and what the success records in
`staged_result`); only the committed object is ever copied to the job's output URI. Both
columns are nullable: rows from before hold no committed output.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("staged_output_uri", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("staged_result", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): batch mode would copy `jobs`, and
    # dropping the old table would cascade to every job's history.
    op.drop_column("jobs", "staged_result")
    op.drop_column("jobs", "staged_output_uri")
