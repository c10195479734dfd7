"""The Celery task: a thin shell around `process_job` that keeps the message safe.

The message is acknowledged only after the job reached a recorded outcome (late acks). If the
database cannot be reached, nothing about the job is known, so the message itself is retried
with backoff instead of being dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from celery import Celery, Task

from toonq.shared.errors import DatabaseUnavailableError, JobNotFoundError
from toonq.shared.job import Outcome
from toonq.shared.logging import bound_job, get_logger
from toonq.shared.queue import TASK_NAME
from toonq.worker import metrics
from toonq.worker.processor import WorkerContext, process_job
from toonq.worker.retries import backoff_delay

log = get_logger(__name__)


def register_tasks(app: Celery, context: Callable[[], WorkerContext]) -> None:
    """Register the matting task on `app`; `context` returns the worker's loaded context."""

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def matte(task: Task, job_id: str) -> str:  # type: ignore[type-arg]
        try:
            job_uuid = uuid.UUID(job_id)
        except (ValueError, TypeError, AttributeError):
            # Never trust a message beyond its job id: anything else is dropped, loudly.
            log.error("message_rejected", reason="not a job id", payload=repr(job_id)[:200])
            metrics.record_job(Outcome.REJECTED)
            return Outcome.REJECTED.value
        ctx = context()
        with bound_job(job_uuid, worker=ctx.worker_name):
            try:
                outcome = process_job(ctx, job_uuid)
            except JobNotFoundError:
                log.error("message_rejected", reason="no such job")
                metrics.record_job(Outcome.REJECTED)
                return Outcome.REJECTED.value
            except DatabaseUnavailableError as exc:
                retries = task.request.retries
                delay = backoff_delay(
                    retries + 1,
                    base_s=ctx.settings.retry_backoff_s,
                    cap_s=ctx.settings.retry_backoff_max_s,
                )
                log.warning("database_unavailable", error=str(exc), delay_s=round(delay, 2))
                raise task.retry(exc=exc, countdown=delay, max_retries=None) from exc
        return outcome.value
