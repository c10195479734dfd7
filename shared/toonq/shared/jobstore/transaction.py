"""The unit of work each store implements: the few primitives every job-store method is written
over. Every change is a compare-and-set (`update`) guarded by a `Selection`, and every transition
writes its event with it (`apply`)."""

from __future__ import annotations

import builtins
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from toonq.shared.job import Job, JobEvent
from toonq.shared.jobstore.selections import Order, Selection
from toonq.shared.jobstore.transitions import Transition


class Transaction(ABC):
    """One unit of work on a store: all of its changes are written, or none."""

    @abstractmethod
    def load(self, job_id: uuid.UUID) -> Job:
        """The job as it is now; JobNotFoundError if there is none."""

    @abstractmethod
    def select(
        self, selection: Selection, order: Order, limit: int | None = None
    ) -> builtins.list[Job]:
        """The jobs `selection` matches, in `order`, at most `limit` of them."""

    @abstractmethod
    def with_keys(self, keys: Iterable[str]) -> dict[str, Job]:
        """The jobs created with these idempotency keys, by key."""

    @abstractmethod
    def events_of(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""

    @abstractmethod
    def insert(self, creation: Transition) -> Job:
        """Add the job `creation` writes, with its event."""

    @abstractmethod
    def update(self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]) -> bool:
        """Write `values` to the job if `guard` matches it; True if it did (the compare-and-set
        succeeded)."""

    @abstractmethod
    def record(self, job_id: uuid.UUID, transition: Transition) -> None:
        """Add `transition`'s event to the job's history."""

    def apply(self, job_id: uuid.UUID, guard: Selection, *steps: Transition) -> bool:
        """Write `steps` at once if `guard` matches the job, with their events in order; False
        (and nothing written) if it did not."""
        values = {name: value for step in steps for name, value in step.values.items()}
        if not self.update(job_id, guard, values):
            return False
        for step in steps:
            self.record(job_id, step)
        return True
