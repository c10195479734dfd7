"""Re-sends the wake-up messages of jobs that would otherwise wait for ever.

A job needs a new message when its message was never sent (the broker was down when the job
was created, requeued or scheduled for retry), when its message is presumed lost (sent longer
ago than the broker's visibility timeout), or when its worker died mid-job (its lease expired).
Duplicates are harmless, so every worker may sweep.
"""

from __future__ import annotations

import threading

from toonq.shared.dispatch import Dispatcher
from toonq.shared.errors import DatabaseUnavailableError
from toonq.shared.jobstore import JobStore
from toonq.shared.logging import get_logger

log = get_logger(__name__)


def sweep(store: JobStore, dispatcher: Dispatcher, *, grace_s: float, lost_after_s: float) -> int:
    """Send a message for every job that needs one; returns how many were sent."""
    sent = 0
    for job in store.due_for_redelivery(unsent_grace_s=grace_s, lost_after_s=lost_after_s):
        if dispatcher.send(job):
            sent += 1
            log.info("job_redelivered", job_id=str(job.id), status=job.status)
    return sent


class SweeperThread(threading.Thread):
    """Sweeps every `interval_s` seconds until `stop()`."""

    def __init__(
        self, store: JobStore, dispatcher: Dispatcher, *, interval_s: float, lost_after_s: float
    ) -> None:
        super().__init__(name="toonq-sweeper", daemon=True)
        self._store = store
        self._dispatcher = dispatcher
        self._interval_s = interval_s
        self._lost_after_s = lost_after_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                sweep(
                    self._store,
                    self._dispatcher,
                    grace_s=self._interval_s,
                    lost_after_s=self._lost_after_s,
                )
            except DatabaseUnavailableError as exc:
                log.warning("sweep_failed", error=str(exc))

    def stop(self) -> None:
        self._stopped.set()
