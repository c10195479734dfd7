"""How a worker is sized and its model made ready: jobs in flight, CPU slots, batches, job
processes, the memory budget, and the loaded, warmed-up engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from toonq.shared.settings import Settings
from toonq.shared.storage import open_store
from toonq.worker import metrics
from toonq.worker.batcher import InferenceBatcher
from toonq.worker.cpus import usable_cpus
from toonq.worker.engine.matting import MattingEngine, RemoteModel, StackedBatch
from toonq.worker.engine.weights import LoadedModel, load_model
from toonq.worker.memory import MIB, default_budget_bytes


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


#: CPUs per job process on a GPU worker: enough that one process's GIL-held time per job stays a
#: small share of what its cores get through (`toonq bench --sections scaling`).
CPUS_PER_JOB_PROCESS = 4
#: At most, by default: each holds an interpreter, PyTorch and its own connections, and four of
#: them keep up with what one GPU runs (a pod without a CPU limit sees every core of its node).
MAX_DEFAULT_JOB_PROCESSES = 4


def default_job_processes(device: torch.device, cpus: int) -> int:
    """Job processes beside the model process: on a GPU, one per `CPUS_PER_JOB_PROCESS` CPUs,
    up to `MAX_DEFAULT_JOB_PROCESSES`; on the CPU, none (one process), whose model uses every
    core anyway."""
    if device.type == "cpu":
        return 1
    return max(1, min(cpus // CPUS_PER_JOB_PROCESS, MAX_DEFAULT_JOB_PROCESSES))


def model_process_prepares(prepare_in: str, device: torch.device) -> bool:
    """Whether a model process takes images as their decoded pixels, composites, resizes and
    normalises them on its device and returns their alpha mattes (`TOONQ_PREPARE_IN`). On a GPU
    by default: that work is the GPU's there, and an image crosses at 4 bytes a pixel, not as a
    float32 model input (12 bytes a pixel at the model size) with its logits (4) back. On the
    CPU the job processes do it, spread over their cores instead of one interpreter's."""
    if prepare_in == "auto":
        return device.type != "cpu"
    return prepare_in == "model-process"


def load_engine(settings: Settings) -> MattingEngine:
    """The model named by the settings, loaded onto its device (not warmed up yet)."""
    loaded = load_model(settings.model, store=open_store(settings))
    return make_engine(settings, loaded, device=settings.device, precision=settings.precision)


def make_engine(
    settings: Settings, model: LoadedModel | RemoteModel, *, device: str, precision: str
) -> MattingEngine:
    """An engine for `model` with the settings' image limits and encoding: the model process's,
    or a job process's (`RemoteModel`, on the CPU in the model's precision)."""
    return MattingEngine(
        model,
        device=device,
        precision=precision,
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
