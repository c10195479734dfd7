"""The job store: where every job's state lives, split by the role of who changes it."""

from toonq.shared.jobstore.roles import (
    Administration,
    Attempts,
    Delivery,
    JobStore,
    Reads,
    Submissions,
)
from toonq.shared.jobstore.sql import SqlJobStore

__all__ = [
    "Administration",
    "Attempts",
    "Delivery",
    "JobStore",
    "Reads",
    "SqlJobStore",
    "Submissions",
]
