"""Tenants: whose job each is, so that workers serve the tenants of a priority band in turn.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

The column is nullable: rows from before belong to no tenant, and are sent as before. The index
serves each release, which counts a tenant's jobs by status and picks its held ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("tenant", sa.String(64), nullable=True))
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_status", table_name="jobs")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): batch mode would copy `jobs`.
    op.drop_column("jobs", "tenant")
