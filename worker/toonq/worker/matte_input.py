"""One input through the pipeline, a still or every frame of an animation: what a worker's job
and each file of `toonq matte` run.

A still is prepared, batched in the GPU loop and finished. An animation's frames are prepared
and handed to the GPU loop one after the other, so that they fill its batches, beside other
jobs' images; at most a window of them waits there at once, and each frame's model input and
logits are dropped once its alpha is back on the host. The CPU-heavy steps hold a CPU slot;
waiting for the GPU never does.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

from toonq.shared.job import JobParams
from toonq.worker.batcher import Batcher, BatchResult
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.animation import Animation
from toonq.worker.engine.matting import MatteResult, MattingEngine, PreparedImage


def matte_input(
    engine: MattingEngine,
    batcher: Batcher,
    cpu: CpuSlots,
    data: bytes,
    params: JobParams,
) -> MatteResult:
    """The output of one input's bytes; the engine's typed errors for an input it refuses."""
    with cpu.held():
        start = time.perf_counter()
        animation = engine.decode_animation(data)
        decode_ms = (time.perf_counter() - start) * 1000
        if animation is None:
            prepared = engine.prepare(data, params)
    if animation is not None:
        return _matte_animation(engine, batcher, cpu, animation, params, decode_ms)
    batch = batcher.run(prepared.model_input)
    prepared.timings_ms |= {"batch_wait": batch.wait_ms, "inference": batch.inference_ms}
    with cpu.held():
        return engine.finish(prepared, batch.logits)


def _matte_animation(
    engine: MattingEngine,
    batcher: Batcher,
    cpu: CpuSlots,
    animation: Animation,
    params: JobParams,
    decode_ms: float,
) -> MatteResult:
    timings = {"decode": decode_ms, "preprocess": 0.0, "batch_wait": 0.0, "inference": 0.0}
    # Two batches' worth: the loop can run one while the next fills.
    window = 2 * batcher.max_batch_size
    waiting: deque[tuple[PreparedImage, Future[BatchResult]]] = deque()
    alphas: list[npt.NDArray[np.uint8]] = []

    def collect_oldest() -> None:
        prepared, future = waiting.popleft()
        batch = future.result()
        timings["batch_wait"] += batch.wait_ms
        timings["inference"] += batch.inference_ms
        alphas.append(engine.alpha(prepared, batch.logits).cpu().numpy())

    for frame in animation.frames:
        if len(waiting) >= window:
            collect_oldest()
        with cpu.held():
            prepared = engine.prepare(frame, params)
        timings["preprocess"] += prepared.timings_ms.get("preprocess", 0.0)
        waiting.append((prepared, batcher.submit(prepared.model_input)))
    while waiting:
        collect_oldest()
    with cpu.held():
        return engine.finish_animation(animation, alphas, params, timings)
