"""Keeping the claims of running jobs alive, and handing them back when the worker stops.

A running job's lease (`TOONQ_LEASE_SECONDS`) is how the system tells a slow job from a dead
worker: once it expires, recovery sends the job again and another worker reclaims it. One
heartbeat thread renews every claim this process holds, every third of the lease, until the
attempt has run for `TOONQ_JOB_TIMEOUT_S`: a job stuck longer than that stops being renewed and
is reclaimed (or failed with `worker_lost` once its attempts are spent).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from toonq.shared.job import Claim, Outcome
from toonq.shared.jobstore import JobStore
from toonq.shared.logging import get_logger
from toonq.shared.recovery import Sender
from toonq.worker import metrics

log = get_logger(__name__)


class LeaseKeeper:
    def __init__(self, store: JobStore, *, lease_s: float, job_timeout_s: float) -> None:
        self._store = store
        self._lease_s = lease_s
        self._job_timeout_s = job_timeout_s
        self._held: dict[uuid.UUID, tuple[Claim, float]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="toonq-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    @contextmanager
    def holding(self, claim: Claim) -> Iterator[None]:
        """Keep `claim`'s lease renewed while the block runs."""
        with self._lock:
            self._held[claim.job.id] = (claim, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(claim.job.id, None)

    def held(self) -> list[Claim]:
        with self._lock:
            return [claim for claim, _ in self._held.values()]

    def hand_back_all(self, sender: Sender, *, reason: str) -> int:
        """Return every job still held to the queue at once (a shutdown ran out of time), so
        another worker starts it now rather than after the lease expires. Returns how many."""
        handed = 0
        for claim in self.held():
            try:
                job = self._store.hand_back(claim, reason=reason)
            except Exception:
                log.exception("hand_back_failed", job_id=str(claim.job.id))
                continue
            if job is None:
                continue  # finished (or was taken away) in the meantime
            sender.send(job)
            metrics.record_job(Outcome.HANDED_BACK)
            log.warning("job_handed_back", job_id=str(job.id), reason=reason)
            handed += 1
        return handed

    def _beat(self) -> None:
        while not self._stopped.wait(self._lease_s / 3):
            now = time.monotonic()
            with self._lock:
                held = list(self._held.values())
            for claim, since in held:
                if now - since > self._job_timeout_s:
                    # Let the lease run out: the attempt is presumed hung.
                    log.warning("job_timed_out", job_id=str(claim.job.id), attempt=claim.attempt)
                    continue
                try:
                    self._store.extend_lease(claim, self._lease_s)
                except Exception:
                    log.warning("lease_renewal_failed", job_id=str(claim.job.id), exc_info=True)
