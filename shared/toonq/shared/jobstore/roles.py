"""The job store's roles, as the parts of toonq that use it see it.

Each caller depends on the role it needs: the client on submissions and reads, the CLI on
administration, the worker on attempts, recovery on delivery. `JobStore` is all five; the SQL
store (`toonq.shared.jobstore.sql`) and the in-memory one (`toonq.shared.jobstore.memory`)
implement it and pass the same contract tests.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

from toonq.shared.job import Claim, Job, JobEvent, JobSpec, JobStatus


class Submissions(Protocol):
    def create(self, spec: JobSpec, *, actor: str) -> tuple[Job, bool]:
        """Create a job; returns (job, created). A repeated idempotency key returns the existing
        job with created=False, or raises IdempotencyConflictError if its parameters differ."""
        ...

    def create_many(
        self, specs: Iterable[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        """`create` for a batch, all or nothing."""
        ...


class Reads(Protocol):
    def get(self, job_id: uuid.UUID) -> Job: ...

    def list(
        self,
        status: JobStatus | str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally filtered by status, error code and creation time."""
        ...

    def events(self, job_id: uuid.UUID) -> builtins.list[JobEvent]:
        """The job's history, oldest first."""
        ...


class Administration(Protocol):
    def cancel(self, job_id: uuid.UUID, *, actor: str, reason: str | None = None) -> Job: ...

    def requeue(
        self,
        job_ids: Iterable[uuid.UUID] | None = None,
        *,
        status: JobStatus | str = JobStatus.FAILED,
        error_code: str | None = None,
        since: datetime | None = None,
        actor: str,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> builtins.list[Job]: ...


class Attempts(Protocol):
    def get(self, job_id: uuid.UUID) -> Job: ...

    def claim(self, job_id: uuid.UUID, *, worker: str, lease_s: float) -> Claim | None: ...

    def extend_lease(self, claim: Claim, lease_s: float) -> bool: ...

    def mark_succeeded(
        self,
        claim: Claim,
        *,
        model_name: str,
        model_revision: str | None,
        image_width: int,
        image_height: int,
        timings: Mapping[str, float],
    ) -> bool: ...

    def mark_retrying(
        self, claim: Claim, *, error_code: str, error_message: str, next_attempt_at: datetime
    ) -> bool: ...

    def mark_failed(self, claim: Claim, *, error_code: str, error_message: str) -> bool: ...

    def hand_back(self, claim: Claim, *, reason: str) -> Job | None: ...


class Delivery(Protocol):
    def mark_enqueued(self, job_id: uuid.UUID) -> bool: ...

    def due_for_recovery(
        self,
        *,
        unsent_grace_s: float,
        lost_after_s: float,
        now: datetime | None = None,
        limit: int = 1000,
    ) -> builtins.list[Job]: ...

    def waiting_after_send(
        self, *, sent_before: datetime, due_before: datetime, limit: int = 1000
    ) -> builtins.list[Job]: ...


class JobStore(Submissions, Reads, Administration, Attempts, Delivery, Protocol):
    """Every role: what a process that does everything (the client, a worker) holds."""
