"""Re-sends the wake-up messages of jobs that would otherwise wait for ever.

A job needs a new message when its message was never sent (the broker was down when the job
was created, requeued or scheduled for retry), when its worker died mid-job (its lease expired),
when the worker that received its message died before claiming it (the message is stranded,
unacknowledged, for a lease or longer), or when its message is presumed lost (sent longer ago
than `TOONQ_RESEND_AFTER_S`). Duplicates are harmless, so every worker may sweep.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from toonq.shared.dispatch import Dispatcher
from toonq.shared.jobstore import Job, JobStore
from toonq.shared.logging import get_logger
from toonq.shared.settings import Settings
from toonq.shared.stranded import QueueMessages

log = get_logger(__name__)

#: How long a job may wait unsent before the sweeper sends it: long enough for the sender that
#: has just committed it to send it itself.
UNSENT_GRACE_S = 10.0
#: Tolerated difference between the clocks of the hosts that send messages.
CLOCK_SKEW_S = 1.0


def sweep(
    store: JobStore,
    dispatcher: Dispatcher,
    *,
    resend_after_s: float,
    unsent_grace_s: float = UNSENT_GRACE_S,
    messages: QueueMessages | None = None,
    stranded_after_s: float = 60.0,
) -> list[Job]:
    """Send a message for every job that needs one; returns the jobs it sent. With the queue's
    `messages` (a Redis broker), also the jobs whose message a worker took
    more than `stranded_after_s` (a lease) ago without claiming them."""
    due = store.due_for_redelivery(unsent_grace_s=unsent_grace_s, lost_after_s=resend_after_s)
    if messages is not None:
        known = {job.id for job in due}
        due += [
            job
            for job in _handed_out_and_unclaimed(store, messages, stranded_after_s)
            if job.id not in known
        ]
    sent = []
    for job in due:
        if dispatcher.send(job):
            sent.append(job)
            log.info("job_redelivered", job_id=str(job.id), status=job.status)
    return sent


def _handed_out_and_unclaimed(
    store: JobStore, messages: QueueMessages, after_s: float
) -> list[Job]:
    now = time.time()
    cutoff = now - after_s
    oldest_waiting = messages.oldest_waiting_sent_at()
    if oldest_waiting is not None:
        # Sent before the oldest message still in the lists: handed out already.
        cutoff = min(cutoff, oldest_waiting - CLOCK_SKEW_S)
    candidates = store.waiting_since(
        sent_before=datetime.fromtimestamp(cutoff, UTC),
        due_before=datetime.fromtimestamp(now - after_s, UTC),
    )
    received_lately = messages.received_job_ids(since=now - after_s)
    return [job for job in candidates if job.id not in received_lately]


def recover(
    store: JobStore,
    dispatcher: Dispatcher,
    settings: Settings,
    messages: QueueMessages | None = None,
) -> list[Job]:
    """One sweep with the thresholds of `settings` (what `toonq recover` runs); `messages`
    defaults to a new view of the settings' queue."""
    return sweep(
        store,
        dispatcher,
        resend_after_s=settings.resend_after_s,
        messages=messages or QueueMessages.of(settings),
        stranded_after_s=settings.lease_s,
    )


class SweeperThread(threading.Thread):
    """Recovers every `TOONQ_SWEEP_INTERVAL_S` seconds until `stop()`. An error is logged and
    the next sweep tries again: the thread must outlive a database or broker outage."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher, settings: Settings) -> None:
        super().__init__(name="toonq-sweeper", daemon=True)
        self._store = store
        self._dispatcher = dispatcher
        self._settings = settings
        # One Redis connection for the thread's life, not one per sweep.
        self._messages = QueueMessages.of(settings)
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._settings.sweep_interval_s):
            try:
                recover(self._store, self._dispatcher, self._settings, self._messages)
            except Exception:
                log.exception("sweep_failed")

    def stop(self) -> None:
        self._stopped.set()
