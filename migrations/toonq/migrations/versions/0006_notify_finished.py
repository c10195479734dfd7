"""PostgreSQL announces each job that finishes, so that waiters need not poll.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

A trigger NOTIFYs the channel `toonq_job_finished` with the job's id when its status becomes
`succeeded`, `failed` or `cancelled`, whichever statement wrote it: a worker's outcome, an
operator's cancel, recovery's `worker_lost`. The notification is delivered when the transaction
commits, never for one rolled back. SQLite has no NOTIFY: its waiters poll.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION toonq_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('toonq_job_finished', NEW.id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_notify_finished AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled')
              AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION toonq_notify_finished()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER jobs_notify_finished ON jobs")
    op.execute("DROP FUNCTION toonq_notify_finished()")
