"""A mask is never refined: a job asks for `mask_only` or `refine_foreground`, not both.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

Refinement estimates a cut-out's colours, and a mask has none: the engine always ignored
`refine_foreground` on a mask, and `JobParams` now refuses the pair, so a row holding it could
no longer be read. Such rows get `refine_foreground` false, which changes nothing about their
output. The downgrade has nothing to restore.

No CHECK constraint guards the pair: adding one to `jobs` on SQLite copies the table, and
dropping the old one would cascade to every job's history.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE jobs SET refine_foreground = false WHERE mask_only AND refine_foreground")


def downgrade() -> None:
    pass
