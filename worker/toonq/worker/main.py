"""Starting a GPU worker process: load the model once, warm it up, then consume.

One process per GPU. The model is loaded and a real inference is run *before* the Celery consumer
starts, so a pod that reports ready takes work at full speed, and a broken image or missing weights
fail the pod at start rather than failing jobs. Jobs run in this process (solo pool) or in threads
sharing the model (`--concurrency N`): CUDA is never initialised in a process that forks.
"""

from __future__ import annotations

import os
import socket

from toonq.shared.db import create_db_engine, session_factory
from toonq.shared.dispatch import Dispatcher
from toonq.shared.jobstore import JobStore
from toonq.shared.logging import get_logger
from toonq.shared.queue import create_celery_app
from toonq.shared.settings import Settings
from toonq.shared.storage import open_store
from toonq.shared.sweeper import SweeperThread
from toonq.worker import metrics
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.weights import load_model
from toonq.worker.processor import WorkerContext
from toonq.worker.tasks import register_tasks

log = get_logger(__name__)


def default_worker_name(gpu: int | None) -> str:
    suffix = f"gpu{gpu}" if gpu is not None else f"pid{os.getpid()}"
    return f"{socket.gethostname()}:{suffix}"


def build_context(settings: Settings, *, worker_name: str) -> WorkerContext:
    store = JobStore(session_factory(create_db_engine(settings.database_url)))
    objects = open_store(settings)
    loaded = load_model(settings.model, store=objects)
    engine = MattingEngine(
        loaded,
        device=settings.device,
        precision=settings.precision,
        resolution=settings.resolution,
        max_image_pixels=settings.max_image_pixels,
        png_compress_level=settings.png_compress_level,
    )
    engine.warmup()
    app = create_celery_app(settings)
    return WorkerContext(
        settings=settings,
        store=store,
        objects=objects,
        engine=engine,
        dispatcher=Dispatcher(app, store, queue=settings.queue),
        worker_name=worker_name,
    )


def run_worker(settings: Settings, *, gpu: int | None = None, concurrency: int = 1) -> None:
    """Run a worker until it is told to stop (SIGTERM: finish the current job, then exit)."""
    worker_name = settings.worker_name or default_worker_name(gpu)
    ctx = build_context(settings, worker_name=worker_name)
    # Served only once the model is warm: a startup probe on it passes when the pod can work.
    metrics.serve(settings.metrics_port)
    app = ctx.dispatcher.app
    register_tasks(app, lambda: ctx)
    sweeper = None
    if settings.sweep_interval_s:
        sweeper = SweeperThread(
            ctx.store,
            ctx.dispatcher,
            interval_s=settings.sweep_interval_s,
            resend_after_s=settings.resend_after_s,
        )
        sweeper.start()
    metrics.READY.set(1)
    log.info("worker_ready", worker=worker_name, queue=settings.queue, concurrency=concurrency)
    try:
        app.Worker(
            hostname=f"toonq@{worker_name}",
            queues=[settings.queue],
            pool="solo" if concurrency == 1 else "threads",
            concurrency=concurrency,
            # Mingle and gossip are cluster chatter this queue has no use for.
            without_mingle=True,
            without_gossip=True,
            loglevel=settings.log_level,
        ).start()
    finally:
        metrics.READY.set(0)
        if sweeper is not None:
            sweeper.stop()
