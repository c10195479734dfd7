"""The job store: where every job's state lives. The SQL store is split by role, one module each:
the producer's submissions, reads, the operators' administration, the worker's attempts, and the
delivery bookkeeping that recovery reads."""

from toonq.shared.jobstore.sql import SqlJobStore

#: What callers hold.
JobStore = SqlJobStore

__all__ = ["JobStore", "SqlJobStore"]
