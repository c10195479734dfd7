"""The operators' changes: cancelling jobs, and sending failed or cancelled ones back to the
queue."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from toonq.shared.errors import (
    PERMANENT_ERROR_CODES,
    InvalidRequestError,
    InvalidTransitionError,
)
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
            # Read first for its callback URL, which never changes: the guard checks the rest.
            job = transaction.load(job_id)
            cancellation = transitions.cancelled(job, actor=actor, now=self._clock(), reason=reason)
            cancelled = transaction.apply(job_id, selections.cancellable(), cancellation)
            if cancelled is None:
                raise transitions.not_cancellable(transaction.load(job_id))
            return cancelled

    def requeue(
        self,
        job_ids: Iterable[uuid.UUID] | None = None,
        *,
        status: JobStatus | str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        all: bool = False,
        include_permanent: bool = False,
        actor: str,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> RequeueResult:
        """Send failed or cancelled jobs back to the queue with fresh attempts.

        Selects `job_ids` (all of which must be failed or cancelled, or nothing is written),
        or the jobs matching the filters (`status`, failed unless given; `error_code`; created
        at or after `since`), or with `all` every failed job. Refuses a call that names none of
        these, so that no job is requeued by accident. Jobs selected by filters or `all` that
        failed with a permanent error code (`PERMANENT_ERROR_CODES`) are skipped unless
        `include_permanent`; jobs named by id never are. A dry run selects and skips the same
        jobs and writes nothing.
        """
        filters = status is not None or error_code is not None or since is not None
        if job_ids is not None and (filters or all):
            raise InvalidRequestError("requeue takes job ids or filters, not both")
        if all and filters:
            raise InvalidRequestError("requeue takes filters or all, not both")
        if job_ids is None and not (filters or all):
            raise InvalidRequestError(
                "requeue needs job ids, a filter (status, error_code, since) or all"
            )
        with self._transaction() as transaction:
            jobs: builtins.list[Job] = []
            skipped: builtins.list[Job] = []
            if job_ids is not None:
                jobs = _jobs_to_requeue(transaction, builtins.list(job_ids))
            else:
                selection = selections.filtered(
                    transitions.requeue_filter(status or JobStatus.FAILED),
                    error_code,
                    aware(since, "since"),
                )
                for job in transaction.select(selection, ("created_at", "id")):
                    permanent = job.error_code in PERMANENT_ERROR_CODES
                    (skipped if permanent and not include_permanent else jobs).append(job)
            if dry_run:
                return RequeueResult(requeued=jobs, skipped=skipped)
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
            return RequeueResult(requeued=requeued, skipped=skipped)


@dataclass(frozen=True)
class RequeueResult:
    """What a requeue did, or in a dry run would do."""

    #: The jobs sent back to the queue as they were written (in a dry run: as they are), oldest
    #: first.
    requeued: builtins.list[Job]
    #: The jobs the filters selected but that failed permanently, left as they are, oldest
    #: first.
    skipped: builtins.list[Job]


def _jobs_to_requeue(
    transaction: Transaction, job_ids: builtins.list[uuid.UUID]
) -> builtins.list[Job]:
    jobs = []
    for job_id in dict.fromkeys(job_ids):  # each once, in the caller's order
        job = transaction.load(job_id)
        transitions.check_requeueable(job_id, job.status)
        jobs.append(job)
    return sorted(jobs, key=lambda job: job.created_at)
