"""A worker's hand-back gets an event kind of its own: `handed_back`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-12

Until now a stopping worker's hand-back was recorded as `requeued`, the kind of an operator's
requeue; the downgrade records the hand-backs written since as `requeued` again.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The kinds the previous revision allowed, from that revision itself.
EVENT_KINDS_0001: tuple[str, ...] = import_module(
    "toonq.migrations.versions.0001_initial"
).EVENT_KINDS
EVENT_KINDS = (*EVENT_KINDS_0001, "handed_back")


def _allow_event_kinds(kinds: Sequence[str]) -> None:
    # SQLite cannot alter a constraint: batch mode copies the table under the new one.
    with op.batch_alter_table("job_events") as batch:
        batch.drop_constraint(op.f("ck_job_events_event_kind"), type_="check")
        batch.create_check_constraint(
            op.f("ck_job_events_event_kind"),
            f"kind IN ({', '.join(repr(kind) for kind in kinds)})",
        )


def upgrade() -> None:
    _allow_event_kinds(EVENT_KINDS)


def downgrade() -> None:
    op.execute("UPDATE job_events SET kind = 'requeued' WHERE kind = 'handed_back'")
    _allow_event_kinds(EVENT_KINDS_0001)
