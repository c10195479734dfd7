"""The job store: where every job's state lives. The SQL store is split by role, one module each:
the producer's submissions, reads, the operators' administration, the worker's attempts, and the
delivery bookkeeping that recovery reads. The in-memory store is its test double, held to the
same contract tests. What each transition writes (`transitions`) and which jobs recovery selects
(`selections`) are defined once, as data both stores apply under their own guards."""

from toonq.shared.jobstore.memory import InMemoryJobStore
from toonq.shared.jobstore.sql import SqlJobStore

#: What callers hold.
JobStore = SqlJobStore | InMemoryJobStore

__all__ = ["InMemoryJobStore", "JobStore", "SqlJobStore"]
