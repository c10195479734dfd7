"""The job store: where every job's state lives. `JobStore` (`store`) writes each of its methods
once, over the few primitives of a transaction that each store implements: the SQL store
(`sql`) and its in-memory test double (`memory`), held to the same contract tests. What each
transition writes (`transitions`) and which jobs a read or a guard selects (`selections`) are
defined once, as data both stores apply."""

from toonq.shared.jobstore.admin import RequeueResult
from toonq.shared.jobstore.memory import InMemoryJobStore
from toonq.shared.jobstore.sql import SqlJobStore
from toonq.shared.jobstore.store import JobStore

__all__ = ["InMemoryJobStore", "JobStore", "RequeueResult", "SqlJobStore"]
