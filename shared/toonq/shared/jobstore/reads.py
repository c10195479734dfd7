"""Reading jobs and their history."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Unpack

from toonq.shared.errors import AmbiguousJobIdError, InvalidRequestError, JobNotFoundError
from toonq.shared.job import Job, JobEvent, JobFilters, aware, parse_status
from toonq.shared.jobstore import selections
from toonq.shared.jobstore.core import StoreCore
from toonq.shared.jobstore.finishes import FinishListener, PollingFinishListener

#: The fewest hex digits of a job id that name it: fewer would soon name several jobs.
MIN_ID_PREFIX = 8
_HEX_DIGITS = frozenset("0123456789abcdef")


class Reads(StoreCore):
    """Reads jobs and their events."""

    def resolve(self, job_id: uuid.UUID | str) -> uuid.UUID:
        """The id of the job `job_id` names: a full id, or the start of exactly one job's id,
        at least 8 hex digits (dashes and case do not matter). InvalidRequestError
        (`invalid_job_id`) for other text, JobNotFoundError when no job's id starts with it,
        AmbiguousJobIdError (naming how many) when several do."""
        if isinstance(job_id, uuid.UUID):
            return job_id
        try:
            return uuid.UUID(job_id)
        except ValueError:
            pass
        digits = job_id.replace("-", "").lower()
        if len(digits) < MIN_ID_PREFIX or not _HEX_DIGITS.issuperset(digits):
            raise InvalidRequestError(
                f"not a job id: {job_id!r}; give a full id or its first {MIN_ID_PREFIX} or more "
                "hex digits",
                code="invalid_job_id",
            )
        with self._transaction() as transaction:
            found = transaction.select(selections.id_prefix(digits), ("id",))
        if not found:
            raise JobNotFoundError(f"no job id starts with {job_id!r}")
        if len(found) > 1:
            raise AmbiguousJobIdError(
                f"{len(found)} job ids start with {job_id!r}: give more of the id"
            )
        return found[0].id

    def get(self, job_id: uuid.UUID) -> Job:
        with self._transaction(single_write=True) as transaction:
            return transaction.load(job_id)

    def get_many(self, job_ids: Iterable[uuid.UUID]) -> builtins.list[Job]:
        """The jobs with these ids (those that exist), in no particular order."""
        job_ids = frozenset(job_ids)
        if not job_ids:
            return []
        with self._transaction() as transaction:
            return transaction.select(selections.with_ids(job_ids), ("id",))

    def finished_since(self, since: datetime, *, limit: int = 1000) -> builtins.list[Job]:
        """Jobs that finished at or after `since`, first finished first."""
        with self._transaction() as transaction:
            return transaction.select(
                selections.finished_since(since), ("finished_at", "id"), limit
            )

    def listen_for_finishes(self) -> FinishListener:
        """A listener that hears jobs finish from now on, until closed (a context manager).
        This one hears nothing and only sleeps; stores that can announce finishes say which."""
        return PollingFinishListener()

    def list(self, **filters: Unpack[JobFilters]) -> builtins.list[Job]:
        """Jobs newest first, optionally filtered by status, error code, creation time and
        tenant."""
        status = filters.get("status")
        selection = selections.filtered(
            None if status is None else parse_status(status),
            filters.get("error_code"),
            aware(filters.get("since"), "since"),
            filters.get("tenant"),
        )
        with self._transaction() as transaction:
            return transaction.select(selection, ("-created_at", "-id"), filters.get("limit", 100))

    def events(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""
        with self._transaction() as transaction:
            transaction.load(job_id)
            return transaction.events_of(job_id)
