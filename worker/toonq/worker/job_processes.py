"""A worker of several processes (`TOONQ_JOB_PROCESSES` > 1): one owns the model and the GPU loop,
the others take the queue's messages and do the jobs' CPU work.

One interpreter runs the Python of every job one after the other (the GIL): past a few hundred
jobs/s, or with a GPU loop that must launch the next batch at once, the jobs' threads get in
each other's way and in the GPU loop's. Here each job process is a whole single-process worker
but for the model: it claims, downloads, decodes, finishes, encodes, uploads and records its
jobs, with its own Celery consumer (late acks), lease keeper, memory budget and graceful
shutdown, and hands its images to the model process through shared memory (`model_link`): their
pixels, which the model process prepares on its GPU, or on the CPU the model inputs it prepared
itself (`TOONQ_PREPARE_IN`). The model process batches the inputs of all of them together.

The model process is the one `toonq worker` starts. It loads and warms up the model, starts the
job processes (spawned: CUDA never meets a fork), serves /livez, /readyz and /metrics for the
whole worker, and:

* is ready once every job process consumes, and not ready as soon as one stops;
* on SIGTERM (or SIGINT), passes it on: each job process finishes or hands back its jobs within
  `TOONQ_SHUTDOWN_GRACE_S`, then the model process exits;
* if a job process dies, reports not live (the pod is restarted), stops the others as on SIGTERM
  and exits with status 1; the dead process's jobs come back when their leases expire;
* if the GPU loop stops for failed batches, reports not live and tells every job process, which
  stops taking messages and hands back its jobs.

The job processes' metrics reach /metrics through prometheus-client's multiprocess mode (a
folder of memory-mapped files), summed with the model process's own.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType

import torch
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from toonq.shared.logging import configure_logging, get_logger, is_verbose
from toonq.shared.settings import Settings
from toonq.worker.allocator import keep_freed_memory
from toonq.worker.consumer import DeviceFailure, consume, job_context, watch_queue_depth
from toonq.worker.engine.device import PRECISIONS
from toonq.worker.engine.matting import MattingEngine, RemoteModel
from toonq.worker.health import Health, serve
from toonq.worker.memory import MemoryBudget, peak_private_bytes
from toonq.worker.model_link import ModelServer, RemoteBatcher
from toonq.worker.pipeline import (
    Pipeline,
    default_memory_budget,
    load_engine,
    make_engine,
    model_process_prepares,
    warm_up,
)
from toonq.worker.shared_tensors import DEFAULT_ROOT, BlockPool, MappedBlocks, nbytes_of

log = get_logger(__name__)

#: The environment variable prometheus-client's multiprocess mode reads at import.
_METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Exit status of a worker one of whose job processes died.
EXIT_JOB_PROCESS_DIED = 1


@dataclass(frozen=True)
class JobProcessSpec:
    """What a job process is told at its start."""

    settings: Settings
    index: int
    worker_name: str
    model: RemoteModel
    precision: str
    max_batch_size: int
    concurrency: int
    cpu_workers: int
    memory_budget_bytes: int
    blocks_folder: Path
    #: The model process prepares images on its device (`model_process_prepares`).
    model_process_prepares: bool
    #: Whether the worker logs other libraries' lines (Celery's) too: `toonq --verbose worker`.
    verbose_logs: bool


def run_model_process(
    settings: Settings, *, worker_name: str, concurrency: int | None = None
) -> None:
    """Run a worker of `settings.job_processes` job processes and this model process until it
    is told to stop; exits with status 1 if a job process died."""
    health = Health(liveness_timeout_s=settings.liveness_timeout_s)
    folder = Path(tempfile.mkdtemp(prefix="toonq-worker-", dir=_shared_memory_root()))
    server = None
    try:
        metrics_folder = folder / "metrics"
        metrics_folder.mkdir()
        os.environ[_METRICS_DIR_VARIABLE] = str(metrics_folder)  # for the job processes only
        if settings.metrics_port:
            registry = CollectorRegistry()
            children = MultiProcessCollector(None, str(metrics_folder))  # type: ignore[no-untyped-call]
            registry.register(_Summed(REGISTRY, children))
            server = serve(
                settings.metrics_port, health, registry=registry, host=settings.metrics_host
            )
        if _run(settings, health, folder, worker_name=worker_name, concurrency=concurrency):
            raise SystemExit(EXIT_JOB_PROCESS_DIED)
    finally:
        os.environ.pop(_METRICS_DIR_VARIABLE, None)
        if server is not None:
            server.close()
        shutil.rmtree(folder, ignore_errors=True)


def _run(
    settings: Settings,
    health: Health,
    folder: Path,
    *,
    worker_name: str,
    concurrency: int | None,
) -> bool:
    """The model process's life; True if a job process died."""
    stopping = threading.Event()
    _on_stop_signals(stopping.set)
    watch_queue_depth(settings)
    started = time.perf_counter()
    engine = load_engine(settings)
    pipeline = Pipeline.for_device(settings, engine, concurrency)
    warm_up(engine, pipeline, started=started)
    # No more job processes than jobs in flight: each holds at least one.
    count = min(settings.job_processes, pipeline.concurrency)
    budget = default_memory_budget(settings, pipeline.concurrency)
    blocks_folder = folder / "blocks"
    blocks_folder.mkdir()
    blocks = MappedBlocks(blocks_folder)
    readiness = _Readiness(count, health)
    servers: list[ModelServer] = []

    def start_all() -> None:
        for model_server in servers:
            model_server.tell_start()

    prepared = _Countdown(count, start_all)

    def device_failed(reason: str) -> None:
        health.mark_failed(reason)
        for model_server in servers:
            model_server.tell_stopped(reason)

    batcher = pipeline.batcher(engine, on_beat=health.beat, on_failed=device_failed)
    prepares = model_process_prepares(settings.prepare_in, engine.device)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(count):
        spec = JobProcessSpec(
            settings=settings,
            index=index,
            # One name for all: the jobs record the worker (one per GPU), not its process.
            worker_name=worker_name,
            model=RemoteModel(engine.model_name, engine.model_revision),
            precision=_precision_name(engine),
            max_batch_size=pipeline.max_batch_size,
            concurrency=_share(pipeline.concurrency, count, index),
            cpu_workers=max(1, pipeline.cpu_workers // count),
            memory_budget_bytes=budget // count,
            blocks_folder=blocks_folder,
            model_process_prepares=prepares,
            verbose_logs=is_verbose(),
        )
        ours, theirs = context.Pipe()
        process = context.Process(
            target=run_job_process, args=(spec, theirs), name=f"toonq-jobs-{index}"
        )
        process.start()
        theirs.close()
        servers.append(
            ModelServer(
                ours,
                batcher,
                blocks,
                engine=engine,
                on_readiness=partial(readiness.set, index),
                on_prepared=prepared.count_down,
                name=f"toonq-link-{index}",
            )
        )
        processes.append(process)
    _on_thread_dump_signal(processes)
    batcher.start()
    for model_server in servers:
        model_server.start()
    log.info(
        "model_process_ready",
        worker=worker_name,
        job_processes=count,
        prepare_in="model-process" if prepares else "job-processes",
        concurrency=pipeline.concurrency,
        max_batch_size=pipeline.max_batch_size,
    )
    died = _supervise(processes, stopping)
    health.mark_not_ready()
    if died:
        health.mark_failed(f"job process {died} exited")
    _stop(processes, grace_s=settings.shutdown_grace_s)
    batcher.stop(timeout=5)
    for model_server in servers:
        model_server.stop()
    log.info("worker_stopped", worker=worker_name)
    return died is not None


def _supervise(
    processes: Sequence[multiprocessing.process.BaseProcess], stopping: threading.Event
) -> str | None:
    """Wait for a stop signal, or for a job process to end; the name of one that died."""
    sentinels = {process.sentinel: process for process in processes}
    while not stopping.is_set():
        for sentinel in wait(list(sentinels), timeout=0.5):
            process = sentinels[sentinel]  # type: ignore[index]
            log.error("job_process_died", process=process.name, exitcode=process.exitcode)
            return str(process.name)
    return None


def _stop(processes: Iterable[multiprocessing.process.BaseProcess], *, grace_s: float) -> None:
    """SIGTERM to the job processes still running (their warm shutdown), then wait: a job
    process hands back what it could not finish within the grace period and exits."""
    running = [process for process in processes if process.is_alive()]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + grace_s + 30
    for process in running:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("job_process_killed", process=process.name)
            process.kill()
            process.join()
    for process in processes:
        if process.pid is not None:
            mark_process_dead(process.pid)  # type: ignore[no-untyped-call]


def _on_thread_dump_signal(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """SIGUSR1 writes this process's thread stacks to stderr, as Celery's does in a job process,
    and passes the signal on to the job processes."""

    def pass_on(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, pass_on)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)


def _on_stop_signals(stop: Callable[[], None]) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("worker_stopping", signal=signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_job_process(spec: JobProcessSpec, connection: Connection) -> None:
    """A job process: a worker without a model, whose inputs go to the model process."""
    # Signals come from the model process alone: a terminal's Ctrl-C reaching both would be
    # a second signal here, which Celery takes for a cold shutdown.
    os.setpgrp()
    settings = spec.settings
    configure_logging(fmt=settings.log_format, level=settings.log_level, verbose=spec.verbose_logs)
    keep_freed_memory()
    health = _ReportingHealth(settings.liveness_timeout_s)
    device_failure = DeviceFailure(health, settings.queue)
    # Blocks kept for reuse: every job in flight's model input at the worker's resolution,
    # and an animation's window of frames besides (in pixels sent whole: images of up to 3 MP
    # at 1024² and fp32).
    keep = (spec.concurrency + 2 * spec.max_batch_size) * nbytes_of(
        (1, 3, settings.resolution, settings.resolution), PRECISIONS[spec.precision]
    )
    batcher = RemoteBatcher(
        connection,
        BlockPool(spec.blocks_folder, keep_bytes=keep),
        max_batch_size=spec.max_batch_size,
        prepares_images=spec.model_process_prepares,
        on_failed=device_failure,
        # Alone, the job process has nothing to run its jobs: it stops as on SIGTERM.
        on_lost=partial(os.kill, os.getpid(), signal.SIGTERM),
    )
    health.batcher = batcher
    engine = make_engine(settings, spec.model, device="cpu", precision=spec.precision)
    torch.set_num_threads(spec.cpu_workers)
    # This process's own interpreter and libraries come out of its share of the budget.
    memory = MemoryBudget(max(1, spec.memory_budget_bytes - peak_private_bytes()))
    ctx = job_context(
        settings,
        engine=engine,
        batcher=batcher,
        concurrency=spec.concurrency,
        cpu_workers=spec.cpu_workers,
        memory=memory,
        worker_name=spec.worker_name,
    )
    # Together: a job process ready first would take every message before the others are.
    batcher.wait_for_start()
    consume(
        ctx,
        health,
        device_failure,
        concurrency=spec.concurrency,
        cpu_workers=spec.cpu_workers,
        max_batch_size=spec.max_batch_size,
        hostname=f"toonq{spec.index}@{spec.worker_name}",
        background_work=spec.index == 0,
    )


class _ReportingHealth(Health):
    """A job process's health: its readiness goes to the model process, which answers the
    probes. The GPU loop's beat is the model process's."""

    batcher: RemoteBatcher | None = None

    def mark_ready(self) -> None:
        super().mark_ready()
        self._report(True)

    def mark_not_ready(self) -> None:
        super().mark_not_ready()
        self._report(False)

    def mark_failed(self, reason: str) -> None:
        super().mark_failed(reason)
        self._report(False)

    def _report(self, ready: bool) -> None:
        if self.batcher is not None:
            self.batcher.report_readiness(ready)


class _Countdown:
    """Calls `done` once `count_down` was called `count` times."""

    def __init__(self, count: int, done: Callable[[], None]) -> None:
        self._left = count
        self._done = done
        self._lock = threading.Lock()

    def count_down(self) -> None:
        with self._lock:
            self._left -= 1
            finished = self._left == 0
        if finished:
            self._done()


class _Readiness:
    """The worker is ready while every job process is."""

    def __init__(self, count: int, health: Health) -> None:
        self._ready = [False] * count
        self._health = health
        self._lock = threading.Lock()

    def set(self, index: int, ready: bool) -> None:
        with self._lock:
            self._ready[index] = ready
            if all(self._ready):
                self._health.mark_ready()
            else:
                self._health.mark_not_ready()


class _Summed(Collector):
    """The model process's metrics and the job processes' (multiprocess files) as one set:
    samples of the same name and labels are added up (a job process's counter and the model
    process's zero of the same series)."""

    def __init__(self, *collectors: Collector) -> None:
        self._collectors = collectors

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], int]] = {}
        for collector in self._collectors:
            for family in collector.collect():
                known = families.setdefault(family.name, family)
                if known is not family:
                    _add_samples(known, family, values.setdefault(family.name, {}))
                else:
                    values[family.name] = {
                        (sample.name, tuple(sorted(sample.labels.items()))): i
                        for i, sample in enumerate(family.samples)
                    }
        return families.values()


def _add_samples(
    into: Metric, family: Metric, index: dict[tuple[str, tuple[tuple[str, str], ...]], int]
) -> None:
    for sample in family.samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        if (at := index.get(key)) is None:
            index[key] = len(into.samples)
            into.samples.append(sample)
        else:
            known = into.samples[at]
            into.samples[at] = known._replace(value=known.value + sample.value)


def _share(total: int, count: int, index: int) -> int:
    """Job process `index`'s part of `total` split as evenly as can be among `count`."""
    return total // count + (index < total % count)


def _precision_name(engine: MattingEngine) -> str:
    return next(name for name, dtype in PRECISIONS.items() if dtype == engine.dtype)


def _shared_memory_root() -> str | None:
    return str(DEFAULT_ROOT) if DEFAULT_ROOT.is_dir() else None
