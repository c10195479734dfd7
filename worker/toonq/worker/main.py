"""Starting a GPU worker process: load the model, warm it up, then consume; stop gracefully.

One process per GPU, pipelined: Celery's threads pool runs up to `concurrency` jobs at once
(download, decode, encode and upload overlap), and one GPU loop runs the model on dynamic batches
of what they prepared. CUDA is never initialised in a process that forks. The model is loaded
and warmed up *before* the consumer starts, so a pod that reports ready takes work at full speed,
and missing weights fail the pod at start rather than failing jobs.

On SIGTERM (Celery's warm shutdown) the worker stops taking messages and lets the jobs in hand
finish. Those still running after `TOONQ_SHUTDOWN_GRACE_S` are handed back to the queue at once,
and the process exits: nothing waits for a lease or the broker's visibility timeout.

After `TOONQ_MAX_CONSECUTIVE_BATCH_FAILURES` failed batches in a row the device is taken for
broken (`DeviceFailure`): the worker stops taking messages, hands back the jobs in hand as they
reach the stopped GPU loop, and reports not ready and not live until it is restarted.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from celery import signals

from toonq.shared.db.engine import create_db_engine
from toonq.shared.db.schema import NAME_LENGTH
from toonq.shared.errors import ConfigurationError
from toonq.shared.jobstore import SqlJobStore
from toonq.shared.logging import get_logger
from toonq.shared.queue import create_celery_app, queue_lists
from toonq.shared.recovery import RecoveryThread, Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import UriPolicy, open_store
from toonq.shared.tenants import TenantLimits
from toonq.shared.text import check_text
from toonq.shared.webhooks.delivery import WebhookDeliverer, WebhookThread
from toonq.worker import metrics
from toonq.worker.allocator import keep_freed_memory
from toonq.worker.batcher import Batcher, InferenceBatcher
from toonq.worker.cpus import CpuSlots, usable_cpus
from toonq.worker.engine.matting import MattingEngine, StackedBatch
from toonq.worker.engine.weights import load_model
from toonq.worker.health import Health, serve
from toonq.worker.lease import LeaseKeeper
from toonq.worker.memory import MIB, MemoryBudget, default_budget_bytes
from toonq.worker.processor import WorkerContext
from toonq.worker.tasks import register_tasks

log = get_logger(__name__)

#: Exit status of a worker whose shutdown grace ran out and that handed jobs back.
EXIT_HANDED_BACK = 0


@dataclass(frozen=True)
class Pipeline:
    """How many jobs a worker holds, how many of them may use a CPU at once, and how its GPU
    loop batches them."""

    concurrency: int
    max_batch_size: int
    max_wait_s: float
    cpu_workers: int
    #: Failed batches in a row that stop the GPU loop (0: never).
    max_failed_batches: int = 0

    @classmethod
    def for_device(
        cls,
        settings: Settings,
        engine: MattingEngine,
        concurrency: int | None = None,
        *,
        max_batch_size: int | None = None,
    ) -> Pipeline:
        # A GPU runs a batch of 8 at 1024² in well under its memory and far faster per image
        # than one at a time; a CPU gains little from batching and waits longer for it.
        batch = (
            max_batch_size or settings.max_batch_size or (8 if engine.device.type == "cuda" else 1)
        )
        jobs = concurrency or settings.concurrency or default_concurrency(batch)
        cpus = settings.cpu_workers or usable_cpus()
        return cls(
            jobs,
            batch,
            settings.max_batch_wait_ms / 1000,
            cpus,
            settings.max_consecutive_batch_failures,
        )

    def batcher(
        self,
        engine: MattingEngine,
        *,
        on_beat: Callable[[], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> InferenceBatcher[StackedBatch]:
        """The GPU loop that runs `engine`'s model on dynamic batches of this pipeline's size;
        `on_failed` hears why, if failed batches stop it."""
        return InferenceBatcher(
            engine.stack_batch,
            engine.run_batch,
            max_batch_size=self.max_batch_size,
            max_wait_s=self.max_wait_s,
            on_beat=on_beat,
            max_failed_batches=self.max_failed_batches,
            on_failed=on_failed,
        )


def default_concurrency(max_batch_size: int) -> int:
    """Jobs in flight: one batch on the device, the next one formed and waiting, and two
    batches' worth being downloaded and prepared or encoded and uploaded. With fewer, batches
    leave half empty while jobs of the last batch are still being finished (measured with
    `toonq bench`'s pipeline section)."""
    return 4 * max_batch_size + 2


def default_worker_name(gpu: int | None) -> str:
    suffix = f"gpu{gpu}" if gpu is not None else f"pid{os.getpid()}"
    return f"{socket.gethostname()}:{suffix}"


def check_identity(worker_name: str, model_spec: str) -> None:
    """What the worker records on every job (its name, and the model's name, which is its spec)
    must fit the job table: refused at start, before any job, rather than at each job's outcome,
    where the write would fail and the job run again on every attempt."""
    for value, what in (
        (worker_name, "the worker name (TOONQ_WORKER_NAME, or host:gpuN)"),
        (model_spec, "the model spec (TOONQ_MODEL)"),
    ):
        check_text(value, what=what, max_length=NAME_LENGTH, error=ConfigurationError)


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


def load_engine(settings: Settings) -> MattingEngine:
    """The model named by the settings, loaded onto its device (not warmed up yet)."""
    loaded = load_model(settings.model, store=open_store(settings))
    return MattingEngine(
        loaded,
        device=settings.device,
        precision=settings.precision,
        resolution=settings.resolution,
        max_image_pixels=settings.max_image_pixels,
        max_frames=settings.max_frames,
        max_animation_s=settings.max_animation_s,
        png_compress_level=settings.png_compress_level,
        compile_mode=settings.compile_mode,
        channels_last=settings.channels_last,
    )


def warm_up(engine: MattingEngine, pipeline: Pipeline, *, started: float) -> None:
    """Size PyTorch's CPU pool, run the warm-up batches and report the model's metrics."""
    if engine.device.type == "cpu":
        # PyTorch sizes its pool from the host's cores, not from what this process may use.
        torch.set_num_threads(pipeline.cpu_workers)
    engine.warmup(pipeline.max_batch_size)
    metrics.set_model_load_seconds(time.perf_counter() - started)
    metrics.watch_compiled_shapes(lambda: len(engine.compiled_shapes))
    metrics.watch_gpu_memory(engine.device)


def default_memory_budget(settings: Settings, concurrency: int) -> int:
    """`TOONQ_MEMORY_BUDGET_MB`, or what is left for images: called once the model is warm, so
    that the default leaves out the peak the model has reached."""
    return settings.memory_budget_mb * MIB or default_budget_bytes(
        concurrency=concurrency, max_input_bytes=settings.max_input_bytes
    )


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


def build_context(
    settings: Settings,
    *,
    worker_name: str,
    health: Health,
    concurrency: int | None = None,
    on_failed: Callable[[str], None] | None = None,
) -> tuple[WorkerContext, Pipeline]:
    started = time.perf_counter()
    engine = load_engine(settings)
    pipeline = Pipeline.for_device(settings, engine, concurrency)
    warm_up(engine, pipeline, started=started)
    memory = MemoryBudget(default_memory_budget(settings, pipeline.concurrency))
    batcher = pipeline.batcher(engine, on_beat=health.beat, on_failed=on_failed)
    context = job_context(
        settings,
        engine=engine,
        batcher=batcher,
        concurrency=pipeline.concurrency,
        cpu_workers=pipeline.cpu_workers,
        memory=memory,
        worker_name=worker_name,
    )
    return context, pipeline


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


def check_job_locations(settings: Settings) -> None:
    """Refuse file:// prefixes for jobs on a networked deployment (`Settings.is_networked`):
    a folder of this machine is one that producers and other workers elsewhere do not see, so
    jobs would fail there or outputs land where nobody finds them. TOONQ_ALLOW_FILE_URIS=1 is
    for the deployments whose machines all mount the same folders."""
    if not settings.is_networked or settings.allow_file_uris:
        return
    if local := UriPolicy.from_settings(settings).file_prefixes:
        raise ConfigurationError(
            f"file:// job locations ({', '.join(map(str, local))}) on a worker with a database "
            "server and a network broker: set TOONQ_OUTPUT_PREFIX (and TOONQ_ALLOWED_*_PREFIXES) "
            "to s3:// locations, or TOONQ_ALLOW_FILE_URIS=1 if every producer and worker mounts "
            "these folders"
        )


def run_worker(
    settings: Settings, *, gpu: int | None = None, concurrency: int | None = None
) -> None:
    """Run a worker until it is told to stop (SIGTERM: finish or hand back, then exit)."""
    check_job_locations(settings)
    worker_name = settings.worker_name or default_worker_name(gpu)
    check_identity(worker_name, settings.model)
    keep_freed_memory()
    if settings.job_processes > 1:
        from toonq.worker.job_processes import run_model_process

        run_model_process(settings, worker_name=worker_name, concurrency=concurrency)
        return
    health = Health(liveness_timeout_s=settings.liveness_timeout_s)
    server = (
        serve(settings.metrics_port, health, host=settings.metrics_host)
        if settings.metrics_port
        else None
    )
    watch_queue_depth(settings)
    device_failure = DeviceFailure(health, settings.queue)
    ctx, pipeline = build_context(
        settings,
        worker_name=worker_name,
        health=health,
        concurrency=concurrency,
        on_failed=device_failure,
    )
    try:
        consume(
            ctx,
            health,
            device_failure,
            concurrency=pipeline.concurrency,
            cpu_workers=pipeline.cpu_workers,
            max_batch_size=pipeline.max_batch_size,
            hostname=f"toonq@{worker_name}",
            background_work=True,
        )
    finally:
        if server is not None:
            server.close()


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
