"""Sending a job's wake-up message, and recording that it was sent.

The database commit comes first and is what makes a job exist; the message follows. A job whose
message could not be sent (broker down, process killed between commit and send) keeps
`enqueued_at` empty, and the sweeper sends it later. Sending twice is harmless: workers claim
jobs with a compare-and-set, so a duplicate message finds nothing to do.
"""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError as BrokerOperationalError

from toonq.shared.jobstore import Job, JobStore
from toonq.shared.logging import get_logger
from toonq.shared.queue import enqueue

log = get_logger(__name__)


class Dispatcher:
    def __init__(self, app: Celery, store: JobStore, *, queue: str) -> None:
        self.app = app
        self.store = store
        self.queue = queue

    def send(self, job: Job, *, countdown: float | None = None) -> bool:
        """Enqueue `job` and mark it sent. Returns False (and logs) when the broker is down:
        the job stays durable in the database and the sweeper retries the send."""
        try:
            enqueue(self.app, job.id, queue=self.queue, priority=job.priority, countdown=countdown)
        except (BrokerOperationalError, OSError) as exc:
            log.warning("enqueue_failed", job_id=str(job.id), error=str(exc))
            return False
        self.store.mark_enqueued(job.id)
        return True
