"""Re-sends the wake-up messages of jobs that would otherwise wait for ever.

A job needs a new message when its message was never sent (the broker was down when the job
was created, requeued or scheduled for retry), when its message is presumed lost (sent longer
ago than `TOONQ_RESEND_AFTER_S`), or when its worker died mid-job (its lease expired).
Duplicates are harmless, so every worker may sweep.
"""

from __future__ import annotations

import threading

from toonq.shared.dispatch import Dispatcher
from toonq.shared.jobstore import Job, JobStore
from toonq.shared.logging import get_logger

log = get_logger(__name__)

#: How long a job may wait unsent before the sweeper sends it: long enough for the sender that
#: has just committed it to send it itself.
UNSENT_GRACE_S = 10.0


def sweep(
    store: JobStore,
    dispatcher: Dispatcher,
    *,
    resend_after_s: float,
    unsent_grace_s: float = UNSENT_GRACE_S,
) -> list[Job]:
    """Send a message for every job that needs one; returns the jobs it sent."""
    sent = []
    for job in store.due_for_redelivery(unsent_grace_s=unsent_grace_s, lost_after_s=resend_after_s):
        if dispatcher.send(job):
            sent.append(job)
            log.info("job_redelivered", job_id=str(job.id), status=job.status)
    return sent


class SweeperThread(threading.Thread):
    """Sweeps every `interval_s` seconds until `stop()`. An error is logged and the next
    sweep tries again: the thread must outlive a database or broker outage."""

    def __init__(
        self, store: JobStore, dispatcher: Dispatcher, *, interval_s: float, resend_after_s: float
    ) -> None:
        super().__init__(name="toonq-sweeper", daemon=True)
        self._store = store
        self._dispatcher = dispatcher
        self._interval_s = interval_s
        self._resend_after_s = resend_after_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                sweep(self._store, self._dispatcher, resend_after_s=self._resend_after_s)
            except Exception:
                log.exception("sweep_failed")

    def stop(self) -> None:
        self._stopped.set()
