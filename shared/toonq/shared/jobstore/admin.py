"""The operators' changes: cancelling jobs, and sending failed or cancelled ones back to the
queue."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from datetime import datetime

from toonq.shared.errors import InvalidTransitionError
from toonq.shared.job import Job, JobStatus, aware
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.core import StoreCore
from toonq.shared.jobstore.transaction import Transaction


class Administration(StoreCore):
    """Cancels and requeues jobs."""

    def cancel(self, job_id: uuid.UUID, *, actor: str, reason: str | None = None) -> Job:
        """Cancel a queued, retrying or running job. A running job's worker finds out when it
        tries to record its outcome (which is then discarded)."""
        with self._transaction(single_write=True) as transaction:
            cancellation = transitions.cancelled(actor=actor, now=self._clock(), reason=reason)
            cancelled = transaction.apply(job_id, selections.cancellable(), cancellation)
            if cancelled is None:
                raise transitions.not_cancellable(transaction.load(job_id))
            return cancelled

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
    ) -> builtins.list[Job]:
        """Send failed or cancelled jobs back to the queue with fresh attempts.

        Selects `job_ids` (all of which must be failed or cancelled, or nothing is written), or,
        without ids, the jobs matching the filters. Returns the jobs as requeued, oldest first; a
        dry run returns them as they are and writes nothing.
        """
        with self._transaction() as transaction:
            if job_ids is not None:
                jobs = _jobs_to_requeue(transaction, builtins.list(job_ids))
            else:
                selection = selections.filtered(
                    transitions.requeue_filter(status), error_code, aware(since, "since")
                )
                jobs = transaction.select(selection, ("created_at",))
            if dry_run:
                return jobs
            now = self._clock()
            requeued = []
            for job in jobs:
                requeue = transitions.requeued(job, actor=actor, now=now, reason=reason)
                written = transaction.apply(job.id, selections.in_status(job.status), requeue)
                if written is None:
                    if job_ids is None:
                        continue  # changed under us (e.g. requeued by another operator)
                    raise InvalidTransitionError(f"job {job.id} changed while requeueing")
                requeued.append(written)
            return requeued


def _jobs_to_requeue(
    transaction: Transaction, job_ids: builtins.list[uuid.UUID]
) -> builtins.list[Job]:
    jobs = []
    for job_id in dict.fromkeys(job_ids):  # each once, in the caller's order
        job = transaction.load(job_id)
        transitions.check_requeueable(job_id, job.status)
        jobs.append(job)
    return sorted(jobs, key=lambda job: job.created_at)
