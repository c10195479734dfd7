"""Keeping a claim alive while its job runs.

A running job's lease (`TOONQ_JOB_TIMEOUT_S`) is how the system tells a slow job from a dead
worker: once it expires, the job may be reclaimed by another worker. While the job is in hand,
a heartbeat renews it every third of its length, so only a worker that stopped beating loses it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from toonq.shared.jobstore import Claim, JobStore
from toonq.shared.logging import get_logger

log = get_logger(__name__)


@contextmanager
def kept_lease(store: JobStore, claim: Claim, lease_s: float) -> Iterator[None]:
    """Renew `claim`'s lease in a background thread for as long as the block runs."""
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.wait(lease_s / 3):
            try:
                if not store.extend_lease(claim, lease_s):
                    return  # the claim is gone (e.g. the job was cancelled): nothing to keep
            except Exception:
                log.warning("lease_renewal_failed", job_id=str(claim.job.id), exc_info=True)

    heartbeat = threading.Thread(target=beat, name=f"lease-{claim.job.id}", daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stopped.set()
        heartbeat.join()
