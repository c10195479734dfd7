"""Reading jobs and their history."""

from __future__ import annotations

import builtins
import uuid
from typing import Unpack

from toonq.shared.job import Job, JobEvent, JobFilters, aware, parse_status
from toonq.shared.jobstore import selections
from toonq.shared.jobstore.core import StoreCore


class Reads(StoreCore):
    """Reads jobs and their events."""

    def get(self, job_id: uuid.UUID) -> Job:
        with self._transaction(single_write=True) as transaction:
            return transaction.load(job_id)

    def list(self, **filters: Unpack[JobFilters]) -> builtins.list[Job]:
        """Jobs newest first, optionally filtered by status, error code and creation time."""
        status = filters.get("status")
        selection = selections.filtered(
            None if status is None else parse_status(status),
            filters.get("error_code"),
            aware(filters.get("since"), "since"),
        )
        with self._transaction() as transaction:
            return transaction.select(selection, ("-created_at", "-id"), filters.get("limit", 100))

    def events(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""
        with self._transaction() as transaction:
            transaction.load(job_id)
            return transaction.events_of(job_id)
