"""A worker process's consumer: the jobs' context, Celery's threads pool taking the queue's
messages, and what stops it (SIGTERM with its grace period, a device that failed).

A worker of one process runs it beside its GPU loop; a worker of several runs it in each job
process (`toonq.worker.job_processes`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import signals

from toonq.shared.db.engine import create_db_engine
from toonq.shared.jobstore import SqlJobStore
from toonq.shared.logging import get_logger
from toonq.shared.queue import create_celery_app, queue_lists
from toonq.shared.recovery import RecoveryThread, Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import UriPolicy, open_store
from toonq.shared.tenants import TenantLimits
from toonq.shared.webhooks.delivery import WebhookDeliverer, WebhookThread
from toonq.worker import metrics
from toonq.worker.batcher import Batcher
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.health import Health
from toonq.worker.lease import LeaseKeeper
from toonq.worker.memory import MIB, MemoryBudget
from toonq.worker.processor import WorkerContext
from toonq.worker.tasks import register_tasks

log = get_logger(__name__)

#: Exit status of a worker whose shutdown grace ran out and that handed jobs back.
EXIT_HANDED_BACK = 0


class DeviceFailure:
    """What a worker does when its GPU loop stopped for failed batches: report not ready and
    not live (Kubernetes restarts the pod), and stop taking messages the way Celery's remote
    `cancel_consumer` does. The jobs in hand go back to the queue as they reach the stopped
    loop (`process_job`)."""

    def __init__(self, health: Health, queue: str) -> None:
        self._health = health
        self._queue = queue
        self._consumer: Any = None

    def install(self) -> None:
        signals.worker_ready.connect(self._attach, weak=False)

    def _attach(self, sender: Any = None, **_: Any) -> None:
        self._consumer = sender  # the consumer, ready before any job runs

    def __call__(self, reason: str) -> None:
        self._health.mark_failed(reason)
        if self._consumer is not None:
            # On the consumer's own thread, which the GPU loop's is not.
            self._consumer.call_soon(self._consumer.cancel_task_queue, self._queue)
        log.error("worker_stopped_taking_jobs", queue=self._queue, reason=reason)


def job_context(
    settings: Settings,
    *,
    engine: MattingEngine,
    batcher: Batcher,
    concurrency: int,
    cpu_workers: int,
    memory: MemoryBudget,
    worker_name: str,
) -> WorkerContext:
    """What the jobs of one process share: stores, queue, lease keeper, limits."""
    objects = open_store(settings, concurrency=concurrency)
    # A connection for each job in flight, and for the lease keeper and the recovery thread.
    store = SqlJobStore(
        create_db_engine(
            settings.database_url,
            pool_size=concurrency + 2,
            statement_timeout_s=settings.db_statement_timeout_s,
        )
    )
    app = create_celery_app(settings)
    return WorkerContext(
        settings=settings,
        store=store,
        objects=objects,
        uris=UriPolicy.from_settings(settings),
        engine=engine,
        batcher=batcher,
        cpu=CpuSlots(cpu_workers),
        memory=memory,
        leases=LeaseKeeper(store, lease_s=settings.lease_s, job_timeout_s=settings.job_timeout_s),
        sender=Sender(app, store, queue=settings.queue, tenants=TenantLimits.of(settings)),
        worker_name=worker_name,
    )


class GracefulShutdown:
    """Bounds Celery's warm shutdown: after the grace period, hand back what is still running
    and exit, rather than wait for jobs that may never end."""

    def __init__(self, ctx: WorkerContext, health: Health, grace_s: float) -> None:
        self._ctx = ctx
        self._health = health
        self._grace_s = grace_s
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        signals.worker_shutting_down.connect(self._begin, weak=False)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _begin(self, sig: str = "", how: str = "", **_: Any) -> None:
        self._health.mark_not_ready()
        held = len(self._ctx.leases.held())
        log.info("worker_stopping", signal=sig, how=how, jobs_in_hand=held, grace_s=self._grace_s)
        if self._timer is None:
            self._timer = threading.Timer(self._grace_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        try:
            handed = self._ctx.leases.hand_back_all(
                self._ctx.sender, reason="the worker shut down before the job finished"
            )
            log.warning("worker_shutdown_grace_expired", handed_back=handed)
        finally:
            # Exit even if the hand-back failed: what it missed, leases and recovery bring back.
            # The job threads cannot be interrupted; their late outcomes would be fenced off.
            os._exit(EXIT_HANDED_BACK)


def watch_queue_depth(settings: Settings) -> None:
    """Report the queue's Redis lists at each scrape of the worker's metrics."""
    if settings.metrics_queue_depth and not settings.is_embedded_broker:
        metrics.watch_queue_depth(settings.broker_url, queue_lists(settings.queue))


def consume(
    ctx: WorkerContext,
    health: Health,
    device_failure: DeviceFailure,
    *,
    concurrency: int,
    cpu_workers: int,
    max_batch_size: int,
    hostname: str,
    background_work: bool,
) -> None:
    """Take the queue's messages with `concurrency` job threads, as the Celery node `hostname`,
    until told to stop; with `background_work`, also run the recovery and webhook threads (one
    process of a worker does)."""
    settings, worker_name = ctx.settings, ctx.worker_name
    app = ctx.sender.app
    register_tasks(app, lambda: ctx)
    shutdown = GracefulShutdown(ctx, health, settings.shutdown_grace_s)
    shutdown.install()
    device_failure.install()
    recovery = None
    if settings.sweep_interval_s and background_work:
        recovery = RecoveryThread(ctx.store, ctx.sender, settings)
        recovery.start()
    webhooks = None
    if settings.webhook_secret is not None and background_work:
        deliverer = WebhookDeliverer(
            ctx.store, settings, actor=worker_name, secret=settings.webhook_secret
        )
        webhooks = WebhookThread(deliverer)
        webhooks.start()
    ctx.leases.start()
    ctx.batcher.start()
    health.mark_ready()
    log.info(
        "worker_ready",
        worker=worker_name,
        queue=settings.queue,
        concurrency=concurrency,
        cpu_workers=cpu_workers,
        max_batch_size=max_batch_size,
        max_batch_wait_ms=settings.max_batch_wait_ms,
        memory_budget_mb=ctx.memory.total_bytes // MIB,
    )
    try:
        app.Worker(
            hostname=hostname,
            queues=[settings.queue],
            pool="threads",
            concurrency=concurrency,
            # Mingle and gossip are cluster chatter this queue has no use for.
            without_mingle=True,
            without_gossip=True,
            loglevel=settings.log_level,
        ).start()
    finally:
        shutdown.cancel()
        health.mark_not_ready()
        if recovery is not None:
            recovery.stop()
        if webhooks is not None:
            webhooks.stop()
        ctx.batcher.stop(timeout=5)
        ctx.leases.stop()
        log.info("worker_stopped", worker=worker_name)
