"""The unit of work each store implements: the few primitives every job-store method is written
over. Every change is a compare-and-set (`update`) guarded by a `Selection`, and every transition
writes its event with it (`apply`). A change returns the job as it wrote it, so that no caller
reads a row again after writing it."""

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
    def tenants(self, selection: Selection) -> builtins.list[str]:
        """The tenants of the jobs `selection` matches, each once, in order."""

    @abstractmethod
    def with_keys(self, keys: Iterable[str]) -> dict[str, Job]:
        """The jobs created with these idempotency keys, by key."""

    @abstractmethod
    def reserve_outputs(self, output_uris: Iterable[str]) -> None:
        """Hold these output URIs until the transaction ends, so that a concurrent transaction
        checking who writes one of them waits for this one to commit first."""

    @abstractmethod
    def events_of(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""

    @abstractmethod
    def insert(self, creation: Transition) -> Job:
        """Add the job `creation` writes, with its event."""

    @abstractmethod
    def update(self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]) -> Job | None:
        """Write `values` to the job if `guard` matches it (the compare-and-set); the job as
        written, or None if the guard did not match."""

    @abstractmethod
    def record(self, job_id: uuid.UUID, transition: Transition) -> None:
        """Add `transition`'s event to the job's history."""

    def apply(self, job_id: uuid.UUID, guard: Selection, *steps: Transition) -> Job | None:
        """Write `steps` at once if `guard` matches the job, with their events in order; the job
        as written, or None (and nothing written) if the guard did not match."""
        values = {name: value for step in steps for name, value in step.values.items()}
        job = self.update(job_id, guard, values)
        if job is None:
            return None
        for step in steps:
            self.record(job_id, step)
        return job
