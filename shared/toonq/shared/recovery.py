"""Sending a job's wake-up message, and recovering the jobs whose message went missing.

The job row is the truth; a message is only a wake-up call. Two words cover everything here:

* **send**: hand a job's message to the broker, then stamp the row's `sent_at`. The commit
  that makes a job exist comes first, so a job whose message could not be sent (broker down,
  process killed between commit and send) keeps `sent_at` empty. Every sender (the client,
  the processor's retries, the hand-back, recovery) goes through `Sender.send`.
* **recover**: send again the message of a job that would otherwise wait for ever, for one of
  the reasons in `RecoveryReason`.

A tenant's queued job may be *held* rather than sent (`toonq.shared.tenants`): its `sent_at`
stays empty until its tenant's turn. Recovery does not take it for unsent: each pass *releases*
held jobs, up to their tenant's limits.

Sending twice is harmless: workers claim jobs with a compare-and-set, so a duplicate message finds
nothing to do, and every worker may recover.

A *stranded* message is one that a worker took and died with before claiming its job. With the
Redis broker it either waits, unacknowledged, in kombu's `unacked` hash until Redis hands it out
again after the visibility timeout (an hour by default), or is gone, when the worker was killed
between Redis popping it off the list and recording it. Both are found the same way: a queue's
lists are first in, first out, so a message sent before the oldest one still waiting has been
handed out. Each band of priorities waits in a list of its own, so this holds within a list: a
job still queued (or running with a lapsed lease, waiting for the message that reclaims it) whose
message was sent before the oldest one still waiting in its own list, more than a lease ago, and
that no worker received within the last lease, has lost its message. Where the broker cannot be
read, a reclaim message is presumed lost after a lease: few jobs lose their worker at once, so
sending theirs once a lease costs little.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerOperationalError

from toonq.shared.job import Job, JobStatus
from toonq.shared.jobstore import JobStore
from toonq.shared.logging import get_logger
from toonq.shared.queue import SENT_AT_HEADER, TASK_NAME, enqueue, priority_bands, queue_lists
from toonq.shared.settings import Settings
from toonq.shared.tenants import NO_LIMITS, TenantLimits

log = get_logger(__name__)

#: How long a job may wait unsent before recovery sends it: long enough for the sender that has
#: just committed it to send it itself.
UNSENT_GRACE_S = 10.0
#: Tolerated difference between the clocks of the hosts that send messages.
CLOCK_SKEW_S = 1.0
#: Where kombu's Redis transport keeps unacknowledged messages (its default key names).
UNACKED_HASH = "unacked"
UNACKED_INDEX = "unacked_index"
#: The broker URL schemes of Redis, whose queues `QueueMessages` reads.
REDIS_SCHEMES = frozenset({"redis", "rediss"})
#: The statuses of the jobs that wait for a worker, and the most of each that `backlog` reads.
WAITING_STATUSES = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.RUNNING)
BACKLOG_LIMIT = 10_000


class RecoveryReason(StrEnum):
    """Why a job's message is sent again."""

    UNSENT = "unsent"  # never sent: the broker was down, or the sender died after the commit
    LEASE_EXPIRED = "lease_expired"  # running, but its worker stopped renewing the lease
    STRANDED = "stranded"  # a worker took the message and died before claiming the job
    LOST = "lost"  # sent longer than TOONQ_RESEND_AFTER_S ago and still waiting
    RELEASED = "released"  # held for its tenant's turn, which has come


@dataclass(frozen=True)
class Recovered:
    job: Job
    reason: RecoveryReason


class Sender:
    """Sends jobs' wake-up messages and records that they were sent; holds tenants' new jobs
    until their turn, under `tenants`' limits (by default none: every job is sent at once)."""

    def __init__(
        self, app: Celery, store: JobStore, *, queue: str, tenants: TenantLimits = NO_LIMITS
    ) -> None:
        self.app = app
        self.store = store
        self.queue = queue
        self.tenants = tenants

    def held(self, job: Job) -> bool:
        """Whether `job` waits for its tenant's turn rather than for a worker."""
        return (
            self.tenants.holding
            and job.tenant is not None
            and job.status == JobStatus.QUEUED
            and job.sent_at is None
        )

    def dispatch(self, jobs: Iterable[Job]) -> None:
        """Send queued jobs that have no message yet: at once, or for tenants' held jobs, by
        releasing each of their tenants' held jobs up to its limits (these once their turn
        comes)."""
        tenants = set()
        ready = []
        for job in jobs:
            if self.held(job) and job.tenant is not None:
                tenants.add(job.tenant)
            else:
                ready.append(job)
        self.send_all(ready)
        for tenant in sorted(tenants):
            self.release(tenant)

    def release(self, tenant: str) -> list[Job]:
        """Send `tenant`'s most urgent held jobs, as many as its limits allow now; returns
        those sent."""
        if not self.tenants.holding:
            return []
        jobs = self.store.releasable(
            tenant,
            queue_slots=self.tenants.queue_slots,
            max_in_flight=self.tenants.max_in_flight,
        )
        return self.send_all(jobs)

    def send(self, job: Job, *, countdown: float | None = None) -> bool:
        """Enqueue `job` and mark it sent. Returns False (and logs) when the broker is down:
        the job stays durable in the database and recovery sends it later."""
        return bool(self.send_all([job], countdown=countdown))

    def send_all(self, jobs: Iterable[Job], *, countdown: float | None = None) -> list[Job]:
        """`send` each of `jobs`, recording the sends in one write once all are handed to the
        broker; the jobs sent."""
        sent = [job for job in jobs if self._enqueue(job, countdown)]
        if sent:
            self.store.mark_all_enqueued(job.id for job in sent)
        return sent

    def _enqueue(self, job: Job, countdown: float | None) -> bool:
        try:
            enqueue(
                self.app,
                job.id,
                queue=self.queue,
                priority=job.priority,
                countdown=countdown,
                sent_at=self.store.now(),  # the clock `sent_at` is stamped with
            )
        except (BrokerOperationalError, OSError) as exc:
            log.warning("send_failed", job_id=str(job.id), error=str(exc))
            return False
        return True


class QueueMessages:
    """One toonq queue's messages on a Redis broker: those waiting in its lists, and those
    received but not yet acknowledged."""

    def __init__(self, broker_url: str, queue: str, *, socket_timeout_s: float | None) -> None:
        self._redis = redis.Redis.from_url(
            broker_url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        self._lists = queue_lists(queue)

    @classmethod
    def of(cls, settings: Settings) -> QueueMessages | None:
        """The queue's messages on a Redis broker, or None on another (the embedded folder
        broker, kombu's in-memory transport), which keeps no such sets."""
        if urlsplit(settings.broker_url).scheme not in REDIS_SCHEMES:
            return None
        return cls(
            settings.broker_url,
            settings.queue,
            socket_timeout_s=settings.redis_socket_timeout_s or None,
        )

    def received_job_ids(
        self, *, since: float = float("-inf"), until: float | None = None
    ) -> set[uuid.UUID]:
        """Job ids of the unacknowledged messages received between `since` and `until` (Unix
        seconds; `until` defaults to now)."""
        until = time.time() if until is None else until
        tags = cast(list[bytes], self._redis.zrangebyscore(UNACKED_INDEX, since, until))
        if not tags:
            return set()
        job_ids = set()
        for raw in cast(list[bytes | None], self._redis.hmget(UNACKED_HASH, tags)):
            message = _message(raw) if raw is not None else None
            if message is not None:
                job_ids.add(message[0])
        return job_ids

    def waiting_job_ids(self) -> set[uuid.UUID]:
        """Job ids of the messages waiting in the queue's lists."""
        pipe = self._redis.pipeline()
        for name in self._lists:
            pipe.lrange(name, 0, -1)
        raws = [raw for listed in cast(list[list[bytes]], pipe.execute()) for raw in listed]
        messages = (_message(raw, wrapped=False) for raw in raws)
        return {message[0] for message in messages if message is not None}

    def oldest_waiting_sent_at(self) -> dict[tuple[int, int], float]:
        """When the oldest message still waiting in each of the queue's non-empty lists was
        sent (Unix seconds), by the band of priorities (lowest, highest) the list holds. A
        message without the sent-at header (from an older producer) counts as sent at the
        epoch: nothing of its band is then taken for stranded until it has left."""
        pipe = self._redis.pipeline()
        for name in self._lists:
            pipe.lindex(name, -1)  # kombu pushes on the left and pops on the right
        oldest: dict[tuple[int, int], float] = {}
        raws = cast(list[bytes | None], pipe.execute())
        for band, raw in zip(priority_bands(), raws, strict=True):
            if raw is None:
                continue
            message = _message(raw, wrapped=False)
            oldest[band] = message[1] if message is not None and message[1] is not None else 0.0
        return oldest

    def close(self) -> None:
        self._redis.close()


def _message(raw: bytes, *, wrapped: bool = True) -> tuple[uuid.UUID, float | None] | None:
    """The job id and sent-at time of one stored message (in the unacked hash, messages are
    wrapped with their exchange and routing key), or None if it is not a toonq message."""
    try:
        loaded = json.loads(raw)
        message: dict[str, Any] = loaded[0] if wrapped else loaded
        headers = message["headers"]
        if headers.get("task") != TASK_NAME:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        job_id = uuid.UUID(json.loads(body)[0][0])
        sent_at = headers.get(SENT_AT_HEADER)
        return job_id, float(sent_at) if sent_at is not None else None
    except (ValueError, LookupError, TypeError, AttributeError):
        log.warning("queued_message_unreadable", preview=repr(raw[:120]))
        return None


def recover(
    store: JobStore,
    sender: Sender,
    *,
    resend_after_s: float,
    unsent_grace_s: float = UNSENT_GRACE_S,
    messages: QueueMessages | None = None,
    stranded_after_s: float = 60.0,
) -> list[Recovered]:
    """Send the message of every job that needs one; returns those it sent. With the queue's
    `messages` (a Redis broker), the stranded ones too: jobs whose message a worker took more
    than `stranded_after_s` (a lease) ago without claiming them. Without them, the reclaim
    message of a running job whose lease lapsed is sent again every `stranded_after_s`."""
    reclaim_lost_after_s = resend_after_s if messages is not None else stranded_after_s
    due = [
        Recovered(job, _reason(job))
        for job in store.due_for_recovery(
            unsent_grace_s=unsent_grace_s,
            lost_after_s=resend_after_s,
            reclaim_lost_after_s=reclaim_lost_after_s,
            hold_tenants=sender.tenants.holding,
        )
    ]
    if messages is not None:
        known = {item.job.id for item in due}
        due += [
            Recovered(job, RecoveryReason.STRANDED)
            for job in _stranded(store, messages, stranded_after_s)
            if job.id not in known
        ]
    sent = []
    for item in due:
        if sender.send(item.job):
            sent.append(item)
            log.info(
                "job_recovered",
                job_id=str(item.job.id),
                status=item.job.status,
                reason=item.reason,
            )
    return sent + release_held(store, sender)


def release_held(store: JobStore, sender: Sender) -> list[Recovered]:
    """Release every tenant's held jobs up to its limits: a release that a claim or a submit
    should have made may have been lost with its process."""
    released = []
    for tenant in store.held_tenants() if sender.tenants.holding else []:
        for job in sender.release(tenant):
            released.append(Recovered(job, RecoveryReason.RELEASED))
            log.info("job_released", job_id=str(job.id), tenant=tenant)
    return released


def recover_once(
    store: JobStore, sender: Sender, settings: Settings, messages: QueueMessages | None = None
) -> list[Recovered]:
    """One recovery pass with the thresholds of `settings` (what `toonq recover` runs);
    `messages` defaults to a new view of the settings' queue."""
    return recover(
        store,
        sender,
        resend_after_s=settings.resend_after_s,
        messages=messages or QueueMessages.of(settings),
        stranded_after_s=settings.lease_s,
    )


@dataclass(frozen=True)
class Backlog:
    """The jobs waiting for a worker (queued, retrying or running; at most `BACKLOG_LIMIT` of
    each are read), and when recovery becomes due for those whose message is not in the queue."""

    by_status: dict[str, int]
    #: How many of them have a message waiting in the queue; None where the broker cannot tell
    #: (not Redis): all of them then count as without one.
    in_queue: int | None
    #: How many of them are held for their tenant's turn: not lost, released as it comes.
    held: int
    #: When a recovery pass would send each of the others again, earliest first.
    due: list[datetime]


def backlog(
    store: JobStore, settings: Settings, messages: QueueMessages | None, sender: Sender
) -> Backlog:
    """What `toonq recover` reports after its pass: a message lost with Redis's data, say, is
    only sent again once its job is due (`due_at`), and this says when that is."""
    waiting = [job for status in WAITING_STATUSES for job in _listed(store, status)]
    in_queue = None if messages is None else messages.waiting_job_ids()
    held = [job for job in waiting if sender.held(job)]
    without = [
        job
        for job in waiting
        if (in_queue is None or job.id not in in_queue) and not sender.held(job)
    ]
    return Backlog(
        by_status=dict(Counter(str(job.status) for job in waiting)),
        in_queue=None if in_queue is None else sum(job.id in in_queue for job in waiting),
        held=len(held),
        due=sorted(due_at(job, settings, stranded=messages is not None) for job in without),
    )


def due_at(job: Job, settings: Settings, *, stranded: bool) -> datetime:
    """When recovery sends the waiting `job` again if no worker takes it first: the time its
    row meets `selections.due_for_recovery` or, where `stranded` messages are looked for (a
    Redis broker), `_stranded`'s condition, whichever comes first."""
    lost_after = timedelta(seconds=settings.resend_after_s)
    if job.status == JobStatus.RUNNING:
        # A reclaim message not in the queue is sent again a lease after the last one.
        expiry = job.lease_expires_at or job.updated_at
        reclaim_lost_after = timedelta(seconds=settings.lease_s)
        return expiry if job.sent_at is None else max(expiry, job.sent_at + reclaim_lost_after)
    # A queued job waits since it was queued; a retrying one since its retry became due.
    retrying = job.status == JobStatus.RETRYING
    became_due = (job.next_attempt_at if retrying else None) or job.updated_at
    if job.sent_at is None:
        return became_due + timedelta(seconds=UNSENT_GRACE_S)
    waiting_since = became_due if retrying else job.sent_at
    lost = max(job.sent_at, waiting_since) + lost_after
    return min(lost, waiting_since + timedelta(seconds=settings.lease_s)) if stranded else lost


def resend_queued(
    store: JobStore,
    sender: Sender,
    messages: QueueMessages | None,
    *,
    skip: Collection[uuid.UUID] = (),
) -> list[Recovered]:
    """Send now the message of every queued job without one waiting in the queue (of every
    queued job where the broker cannot tell), except those in `skip` and those held for their
    tenant's turn: what an operator does once Redis lost its data, rather than wait until the
    jobs are due."""
    in_queue = set() if messages is None else messages.waiting_job_ids()
    sent = []
    for job in _listed(store, JobStatus.QUEUED):
        if job.id in in_queue or job.id in skip or sender.held(job):
            continue
        if sender.send(job):
            sent.append(Recovered(job, _reason(job)))
            log.info("job_recovered", job_id=str(job.id), status=job.status, forced=True)
    return sent


def _listed(store: JobStore, status: JobStatus) -> list[Job]:
    return store.list(status=status, limit=BACKLOG_LIMIT)


def _reason(job: Job) -> RecoveryReason:
    if job.status == JobStatus.RUNNING:
        return RecoveryReason.LEASE_EXPIRED
    return RecoveryReason.UNSENT if job.sent_at is None else RecoveryReason.LOST


def _stranded(store: JobStore, messages: QueueMessages, after_s: float) -> list[Job]:
    now = store.now().timestamp()
    cutoff = now - after_s
    oldest_waiting = messages.oldest_waiting_sent_at()
    sent_before = {}
    for band in priority_bands():
        oldest = oldest_waiting.get(band)
        # Sent before the oldest message still in its own list: handed out already.
        band_cutoff = cutoff if oldest is None else min(cutoff, oldest - CLOCK_SKEW_S)
        sent_before[band] = datetime.fromtimestamp(band_cutoff, UTC)
    candidates = store.waiting_after_send(
        sent_before=sent_before, due_before=datetime.fromtimestamp(cutoff, UTC)
    )
    # Kombu stamps a receipt with the receiving host's clock.
    received_lately = messages.received_job_ids(since=time.time() - after_s)
    return [job for job in candidates if job.id not in received_lately]


class RecoveryThread(threading.Thread):
    """Recovers every `TOONQ_SWEEP_INTERVAL_S` seconds until `stop()`. An error is logged and
    the next pass tries again: the thread must outlive a database or broker outage."""

    def __init__(self, store: JobStore, sender: Sender, settings: Settings) -> None:
        super().__init__(name="toonq-recovery", daemon=True)
        self._store = store
        self._sender = sender
        self._settings = settings
        # One Redis connection for the thread's life, not one per pass.
        self._messages = QueueMessages.of(settings)
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._settings.sweep_interval_s):
            try:
                recover_once(self._store, self._sender, self._settings, self._messages)
            except Exception:
                log.exception("recovery_failed")

    def stop(self) -> None:
        self._stopped.set()
