"""The unit of work each store implements: the few primitives every job-store method is written
over. Every change is a compare-and-set (`update`) guarded by a `Selection`, and every transition
writes its event with it (`apply`). A change returns the job as it wrote it, so that no caller
reads a row again after writing it; a caller that needs only whether the guard matched asks
`update_matched` or `apply_matched`, which fetch no row."""

from __future__ import annotations

import builtins
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from toonq.shared.job import Claim, Job, JobEvent
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

    def insert_all(self, creations: Sequence[Transition]) -> builtins.list[Job]:
        """`insert` each of `creations`, in order; the jobs, in the same order."""
        return [self.insert(creation) for creation in creations]

    @abstractmethod
    def update(self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]) -> Job | None:
        """Write `values` to the job if `guard` matches it (the compare-and-set); the job as
        written, or None if the guard did not match."""

    def update_matched(
        self, job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any]
    ) -> bool:
        """`update`, returning only whether the guard matched (and `values` were written)."""
        return self.update(job_id, guard, values) is not None

    def update_all(self, guard: Selection, values: Mapping[str, Any]) -> builtins.set[uuid.UUID]:
        """Write `values` to every job `guard` matches; the ids of the jobs written."""
        return {
            job.id
            for job in self.select(guard, ("id",))
            if self.update_matched(job.id, guard, values)
        }

    @abstractmethod
    def record(self, job_id: uuid.UUID, transition: Transition) -> None:
        """Add `transition`'s event to the job's history."""

    def apply(self, job_id: uuid.UUID, guard: Selection, *steps: Transition) -> Job | None:
        """Write `steps` at once if `guard` matches the job, with their events in order; the job
        as written, or None (and nothing written) if the guard did not match."""
        job = self.update(job_id, guard, merged_values(steps))
        if job is not None:
            self._record_all(job_id, steps)
        return job

    def apply_matched(self, job_id: uuid.UUID, guard: Selection, *steps: Transition) -> bool:
        """`apply`, returning only whether the guard matched (and `steps` were written)."""
        matched = self.update_matched(job_id, guard, merged_values(steps))
        if matched:
            self._record_all(job_id, steps)
        return matched

    def claim_if_waiting(
        self, job_id: uuid.UUID, *, due_by: datetime | None, start: Transition
    ) -> Claim | None:
        """Start the next attempt of a job that waits for it (queued, or retrying and due by
        `due_by` unless that is None) in one statement that waits for no lock, writing what
        `start` writes but for the attempt, which it counts up from the row's; None if the job
        is anything else or is locked. Only a store whose `_claims_in_one_statement` has it."""
        raise NotImplementedError(f"{type(self).__name__} claims in a read and a write")

    def _record_all(self, job_id: uuid.UUID, steps: tuple[Transition, ...]) -> None:
        for step in steps:
            self.record(job_id, step)


def merged_values(steps: Iterable[Transition]) -> dict[str, Any]:
    """What `steps` write to the job, the later step's value where two write one field."""
    return {name: value for step in steps for name, value in step.values.items()}
