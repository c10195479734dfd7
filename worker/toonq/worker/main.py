"""Starting a GPU worker: load the model, warm it up, then consume; stop gracefully.

One worker per GPU, pipelined: Celery's threads pool runs up to `concurrency` jobs at once
(download, decode, encode and upload overlap), and one GPU loop runs the model on dynamic batches
of what they prepared. The jobs run in the GPU loop's own process, or, with `TOONQ_JOB_PROCESSES`
above 1 (by default on a GPU host with many CPUs), in processes of their own beside it
(`toonq.worker.job_processes`). CUDA is never initialised in a process that forks. The model is
loaded and warmed up *before* the consumer starts, so a pod that reports ready takes work at full
speed, and missing weights fail the pod at start rather than failing jobs.

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
import time
from collections.abc import Callable
from dataclasses import replace

from toonq.shared.db.schema import NAME_LENGTH
from toonq.shared.errors import ConfigurationError
from toonq.shared.settings import Settings
from toonq.shared.storage import UriPolicy
from toonq.shared.text import check_text
from toonq.worker.allocator import keep_freed_memory
from toonq.worker.consumer import DeviceFailure, consume, job_context, watch_queue_depth
from toonq.worker.cpus import usable_cpus
from toonq.worker.engine.device import resolve_device
from toonq.worker.health import Health, serve
from toonq.worker.job_processes import run_model_process
from toonq.worker.memory import MemoryBudget
from toonq.worker.pipeline import (
    Pipeline,
    default_job_processes,
    default_memory_budget,
    load_engine,
    warm_up,
)
from toonq.worker.processor import WorkerContext


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
    processes = settings.job_processes or default_job_processes(
        resolve_device(settings.device), settings.cpu_workers or usable_cpus()
    )
    if processes > 1:
        run_model_process(
            replace(settings, job_processes=processes),
            worker_name=worker_name,
            concurrency=concurrency,
        )
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
