"""The job store on PostgreSQL or SQLite: every state change in one transaction with its event
row.

Callers get immutable snapshots (`Job`, `JobEvent`), never ORM rows. A transition moves a job to
the status its event's kind leads to (`EventKind.status`), so the history and the row agree.
Worker-side transitions are compare-and-set UPDATEs on (job id, status, attempt, start time),
checked through their row count: a duplicated or redelivered message finds nothing to claim, and
a stale worker (whose job was cancelled, or reclaimed after its lease expired) cannot overwrite
the outcome that another party recorded. Admin transitions use the same guarded UPDATEs, so they
need no row locks either. Each role lives in a module of its own.
"""

from toonq.shared.jobstore.sql.admin import SqlAdministration
from toonq.shared.jobstore.sql.attempts import SqlAttempts
from toonq.shared.jobstore.sql.delivery import SqlDelivery
from toonq.shared.jobstore.sql.reads import SqlReads
from toonq.shared.jobstore.sql.submissions import SqlSubmissions


class SqlJobStore(SqlSubmissions, SqlReads, SqlAdministration, SqlAttempts, SqlDelivery):
    """Creates, reads and transitions jobs. Thread-safe: every call uses its own session."""


__all__ = ["SqlJobStore"]
