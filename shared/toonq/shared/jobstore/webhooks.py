"""The webhook outbox, kept in the job rows: which webhooks are due, taking one to deliver, and
recording what each attempt did. An outcome makes its webhook due in the statement that records
it (`transitions._webhook_due`), so none is lost between the two."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable
from datetime import timedelta

from toonq.shared.job import Job, JobEvent, WebhookState
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.core import StoreCore


class Webhooks(StoreCore):
    """Finds, takes and records the webhooks of finished jobs."""

    def take_due_webhooks(
        self, *, hold_s: float, limit: int = 100
    ) -> builtins.list[tuple[Job, builtins.list[JobEvent]]]:
        """Webhooks due now, oldest first, each with its job's history, taken for `hold_s`
        seconds: no other deliverer takes them before, and any may after (when this one died
        before recording the attempt)."""
        now = self._clock()
        with self._transaction() as transaction:
            due = transaction.select(selections.webhooks_due(now), ("webhook_next_at",), limit)
        taken: builtins.list[tuple[Job, builtins.list[JobEvent]]] = []
        for job in due:
            with self._transaction() as transaction:
                held = transaction.update(
                    job.id, selections.webhook_as_read(job), transitions.webhook_taken(now, hold_s)
                )
                if held is not None:
                    taken.append((held, transaction.events_of(job.id)))
        return taken

    def record_webhook_sent(self, job: Job, *, actor: str, status_code: int) -> Job | None:
        """The taken webhook of `job` delivered; None if it is not the job's webhook any more
        (the job was requeued meanwhile)."""
        with self._transaction(single_write=True) as transaction:
            sent = transitions.webhook_sent(
                job, actor=actor, now=self._clock(), status_code=status_code
            )
            return transaction.apply(job.id, selections.webhook_pending(job), sent)

    def record_webhook_missed(
        self, job: Job, *, actor: str, problem: str, retry_after: timedelta | None
    ) -> Job | None:
        """An attempt at the taken webhook of `job` failed: retried `retry_after` from now, or
        failed for good when None."""
        with self._transaction(single_write=True) as transaction:
            now = self._clock()
            retry_at = None if retry_after is None else now + retry_after
            missed = transitions.webhook_missed(
                job, actor=actor, now=now, problem=problem, retry_at=retry_at
            )
            return transaction.apply(job.id, selections.webhook_pending(job), missed)

    def failed_webhooks(self, *, limit: int = 100) -> builtins.list[Job]:
        """Jobs whose last outcome's webhook failed for good, most recent first."""
        with self._transaction() as transaction:
            return transaction.select(
                selections.webhooks_in(WebhookState.FAILED), ("-finished_at", "-id"), limit
            )

    def resend_webhooks(self, job_ids: Iterable[uuid.UUID]) -> builtins.list[Job]:
        """Make the failed webhooks of these jobs due again now, with fresh attempts; the jobs
        whose webhook had not failed are left as they are and not returned."""
        resent = []
        for job_id in job_ids:
            with self._transaction(single_write=True) as transaction:
                job = transaction.update(
                    job_id,
                    selections.webhooks_in(WebhookState.FAILED),
                    transitions.webhook_resent(self._clock()),
                )
            if job is not None:
                resent.append(job)
        return resent
