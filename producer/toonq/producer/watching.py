"""Waiting for jobs to finish without polling the database where it can say when they do.

On PostgreSQL a listener hears each job that finishes (`FinishListener`) and the waiter reads
only the jobs it heard of, at once; it also reads everything it waits for every `RECHECK_S`, in
case a notification was lost with a dropped connection. Elsewhere the waiter reads its jobs
every `poll_interval`.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Final

from toonq.shared.errors import ToonqError
from toonq.shared.job import Job, utc_now
from toonq.shared.jobstore import JobStore

#: How often a waiter that hears finishes reads its jobs anyway.
RECHECK_S: Final = 10.0


class WaitTimeoutError(ToonqError):
    code = "wait_timeout"


def until_finished(
    store: JobStore,
    job_ids: Iterable[uuid.UUID],
    *,
    timeout: float | None,
    poll_interval: float,
) -> Iterator[Job]:
    """Each of the jobs once it is finished, those finished already first; WaitTimeoutError
    (naming the jobs still unfinished) when `timeout` seconds pass first."""
    pending = set(job_ids)
    deadline = _deadline(timeout)
    # Listening starts before the first read, so a job finishing in between is heard of.
    with store.listen_for_finishes() as listener:
        to_read = set(pending)
        while True:
            for job in _by_finish(store.get_many(to_read)):
                if job.status.is_finished:
                    pending.discard(job.id)
                    yield job
            if not pending:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                unfinished = ", ".join(sorted(str(job_id) for job_id in pending))
                raise WaitTimeoutError(f"still unfinished after {timeout:g} s: {unfinished}")
            heard = listener.wait(min(remaining, _interval(listener.announces, poll_interval)))
            to_read = pending if not heard else pending & heard


def as_they_finish(
    store: JobStore, *, timeout: float | None, poll_interval: float
) -> Iterator[Job]:
    """Every job that finishes once the iteration has started, as it does, for `timeout`
    seconds (for ever when None)."""
    deadline = _deadline(timeout)
    since: datetime = utc_now()
    seen: set[uuid.UUID] = set()  # those that finished at `since`, yielded already
    with store.listen_for_finishes() as listener:
        while (remaining := deadline - time.monotonic()) > 0:
            heard = listener.wait(min(remaining, _interval(listener.announces, poll_interval)))
            if listener.announces:
                yield from _by_finish(store.get_many(heard or ()))
                continue
            for job in store.finished_since(since):
                if job.id in seen:
                    continue
                assert job.finished_at is not None
                if job.finished_at > since:
                    since, seen = job.finished_at, set()
                seen.add(job.id)
                yield job


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else time.monotonic() + timeout


def _interval(announces: bool, poll_interval: float) -> float:
    return RECHECK_S if announces else poll_interval


def _by_finish(jobs: Iterable[Job]) -> list[Job]:
    return sorted(jobs, key=lambda job: (job.finished_at is None, job.finished_at or 0, job.id))
