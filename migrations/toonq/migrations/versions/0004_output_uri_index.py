"""An index on the jobs' output URIs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

A submit refuses an output URI that another job has (`output_conflict`), which looks the URI up
among every job. A hash index on PostgreSQL: a B-tree's entries are limited to a third of a
page, and a file URI has no length limit. Not unique: rows from before the check may share one.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_jobs_output_uri"), "jobs", ["output_uri"], postgresql_using="hash")


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_output_uri"), table_name="jobs")
