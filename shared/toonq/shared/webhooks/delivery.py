"""The workers deliver webhooks: a thread of each worker takes the webhooks due, POSTs them a
few at a time and records each attempt as a job event. Delivery is at least once: a worker that
dies after the POST and before recording it leaves the webhook to be taken again once its hold
lapses, and the receiver sees the same `webhook-id` twice."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Final

import structlog

from toonq.shared.job import Job, JobEvent
from toonq.shared.jobstore import JobStore
from toonq.shared.settings import Settings
from toonq.shared.webhooks.addresses import CallbackPolicy
from toonq.shared.webhooks.messages import message_for
from toonq.shared.webhooks.sending import post

log = structlog.get_logger("toonq.webhooks")

#: Each retry waits this many times longer than the one before, up to `MAX_BACKOFF`.
BACKOFF_FACTOR: Final = 4
MAX_BACKOFF: Final = timedelta(hours=6)
#: POSTs in flight at once per worker, so that one slow receiver does not hold up the others.
PARALLEL_POSTS: Final = 8


def retry_delay(settings: Settings, attempt: int) -> timedelta:
    """How long after failed attempt `attempt` (1-based) the next one is due."""
    delay = timedelta(seconds=settings.webhook_backoff_s * BACKOFF_FACTOR ** (attempt - 1))
    return min(delay, MAX_BACKOFF)


class WebhookDeliverer:
    """Delivers the webhooks due, as `actor` (the worker's name)."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        *,
        actor: str,
        secret: str,
    ) -> None:
        self._store = store
        self._settings = settings
        self._actor = actor
        self._secret = secret
        self._policy = CallbackPolicy.of(settings.webhook_allowed_hosts)
        # Long enough for the POST and its recording; then another worker may take it.
        self._hold_s = 2 * settings.webhook_timeout_s + 30

    def deliver_due(self) -> int:
        """Attempt every webhook due now; how many were attempted."""
        taken = self._store.take_due_webhooks(hold_s=self._hold_s, limit=4 * PARALLEL_POSTS)
        if not taken:
            return 0
        with ThreadPoolExecutor(PARALLEL_POSTS, thread_name_prefix="toonq-webhook") as pool:
            list(pool.map(lambda item: self._attempt(*item), taken))
        return len(taken)

    def _attempt(self, job: Job, events: list[JobEvent]) -> None:
        assert job.callback_url is not None
        message = message_for(job, events)
        headers = message.headers(self._secret, int(time.time()))
        result = post(
            job.callback_url,
            message.body,
            headers,
            policy=self._policy,
            timeout_s=self._settings.webhook_timeout_s,
        )
        if result.delivered:
            assert result.status_code is not None
            self._store.record_webhook_sent(job, actor=self._actor, status_code=result.status_code)
            log.info("webhook_sent", job_id=str(job.id), webhook_id=job.webhook_id)
            return
        assert result.problem is not None
        attempt = job.webhook_attempts + 1
        retry_after = None
        if attempt < self._settings.webhook_max_attempts:
            retry_after = retry_delay(self._settings, attempt)
        self._store.record_webhook_missed(
            job, actor=self._actor, problem=result.problem, retry_after=retry_after
        )
        log.warning(
            "webhook_failed" if retry_after is None else "webhook_retry",
            job_id=str(job.id),
            webhook_id=job.webhook_id,
            attempt=attempt,
            problem=result.problem,
        )


class WebhookThread(threading.Thread):
    """Runs a `WebhookDeliverer` every `interval_s` until `stop()`; an error is logged and the
    next pass tries again."""

    def __init__(self, deliverer: WebhookDeliverer, *, interval_s: float = 1.0) -> None:
        super().__init__(name="toonq-webhooks", daemon=True)
        self._deliverer = deliverer
        self._interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._deliverer.deliver_due()
            except Exception:
                log.exception("webhook_delivery_failed")

    def stop(self) -> None:
        self._stopped.set()
