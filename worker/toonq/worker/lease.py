"""Keeping the claims of running jobs alive, and handing them back when the worker stops.

A running job's lease (`TOONQ_LEASE_SECONDS`) is how the system tells a slow job from a dead
worker: once it expires, recovery sends the job again and another worker reclaims it. One
heartbeat thread renews every claim this process holds, every third of the lease, until the
attempt has run for `TOONQ_JOB_TIMEOUT_S`: a job stuck longer than that stops being renewed and
is reclaimed (or failed with `worker_lost` once its attempts are spent).

A renewal the store refuses means the attempt is no longer the job's current one (it was
cancelled, requeued or reclaimed): the keeper marks it lost, and the job's thread stops at its
next step (`check`) instead of uploading an output nobody will record. Claims are keyed by
(job, attempt, start time), the same fence the store guards outcomes with, so a stale attempt and
a new one of the same job are never mistaken for each other.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from toonq.shared.job import Claim, Outcome
from toonq.shared.jobstore import JobStore
from toonq.shared.logging import get_logger
from toonq.shared.recovery import Sender
from toonq.worker import metrics

log = get_logger(__name__)


#: What tells one attempt from another: the fence of `selections.current_attempt`.
_AttemptKey = tuple[uuid.UUID, int, datetime | None]


class ClaimLostError(Exception):
    """The attempt's claim is no longer current: its work must stop, its outcome is not
    recorded."""

    @classmethod
    def of(cls, claim: Claim) -> ClaimLostError:
        return cls(f"job {claim.job.id}: attempt {claim.attempt} is no longer current")


def _key(claim: Claim) -> _AttemptKey:
    return (claim.job.id, claim.attempt, claim.job.started_at)


class LeaseKeeper:
    def __init__(self, store: JobStore, *, lease_s: float, job_timeout_s: float) -> None:
        self._store = store
        self._lease_s = lease_s
        self._job_timeout_s = job_timeout_s
        self._held: dict[_AttemptKey, tuple[Claim, float]] = {}
        self._lost: set[_AttemptKey] = set()
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
        key = _key(claim)
        with self._lock:
            self._held[key] = (claim, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)
                self._lost.discard(key)

    def check(self, claim: Claim) -> None:
        """ClaimLostError if a renewal found `claim` no longer current."""
        with self._lock:
            lost = _key(claim) in self._lost
        if lost:
            raise ClaimLostError.of(claim)

    def held(self) -> list[Claim]:
        with self._lock:
            return [claim for claim, _ in self._held.values()]

    def hand_back_all(self, sender: Sender, *, reason: str) -> int:
        """Return every job still held to the queue at once (a shutdown ran out of time), so
        another worker starts it now rather than after the lease expires. Returns how many."""
        return sum(self.hand_back(claim, sender, reason=reason) for claim in self.held())

    def hand_back(self, claim: Claim, sender: Sender, *, reason: str) -> bool:
        """Return the job of `claim` to the queue without spending its attempt, and send its
        message; False if it finished (or was taken away) meanwhile, or the store failed."""
        try:
            job = self._store.hand_back(claim, reason=reason)
        except Exception:
            log.exception("hand_back_failed", job_id=str(claim.job.id))
            return False
        if job is None:
            return False
        metrics.record_job(Outcome.HANDED_BACK)
        log.warning("job_handed_back", job_id=str(job.id), reason=reason)
        try:
            sender.send(job)
        except Exception:
            # The job is queued again; recovery sends its message as an unsent job's.
            log.exception("hand_back_send_failed", job_id=str(job.id))
        return True

    def renew(self) -> None:
        """Renew every held claim once (the heartbeat thread's work), marking lost those the
        store refuses."""
        now = time.monotonic()
        with self._lock:
            held = list(self._held.items())
        for key, (claim, since) in held:
            if now - since > self._job_timeout_s:
                # Let the lease run out: the attempt is presumed hung.
                log.warning("job_timed_out", job_id=str(claim.job.id), attempt=claim.attempt)
                continue
            try:
                renewed = self._store.extend_lease(claim, self._lease_s)
            except Exception:
                log.warning("lease_renewal_failed", job_id=str(claim.job.id), exc_info=True)
                continue
            if not renewed:
                log.warning("lease_lost", job_id=str(claim.job.id), attempt=claim.attempt)
                with self._lock:
                    if key in self._held:
                        self._lost.add(key)

    def _beat(self) -> None:
        while not self._stopped.wait(self._lease_s / 3):
            self.renew()
