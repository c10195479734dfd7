"""One input through the pipeline, a still or every frame of an animation: what a worker's job
and each file of `toonq matte` run.

A still is prepared, batched in the GPU loop and finished. An animation's frames are prepared
and handed to the GPU loop one after the other, so that they fill its batches, beside other
jobs' images; at most a window of them waits there at once, and each frame's model input and
logits are dropped once its alpha is back on the host. The CPU-heavy steps hold a CPU slot;
waiting for the GPU never does.

A job process whose model process prepares images on its device (`TOONQ_PREPARE_IN`) only
decodes them: their pixels go to the model process, their alpha mattes come back.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt
import torch

from toonq.shared.job import JobParams
from toonq.worker.batcher import Batcher, BatchResult
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.animation import Animation
from toonq.worker.engine.matting import DecodedImage, MatteResult, MattingEngine, PreparedImage
from toonq.worker.model_link import RemoteBatcher


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
            prepared, future = _send(engine, batcher, data, params)
    if animation is not None:
        return _matte_animation(engine, batcher, cpu, animation, params, decode_ms)
    batch = future.result()
    prepared.timings_ms |= {"batch_wait": batch.wait_ms, "inference": batch.inference_ms}
    with cpu.held():
        if isinstance(prepared, PreparedImage):
            return engine.finish(prepared, batch.logits)
        return engine.finish_alpha(prepared, batch.logits)


def _send(
    engine: MattingEngine,
    batcher: Batcher,
    source: bytes | npt.NDArray[np.uint8],
    params: JobParams,
) -> tuple[DecodedImage, Future[BatchResult]]:
    """The image prepared and handed to the GPU loop, or only decoded and sent whole to a model
    process that prepares images itself; with the future of what comes back."""
    if isinstance(batcher, RemoteBatcher) and batcher.prepares_images:
        decoded = engine.decode_input(source, params)
        return decoded, batcher.submit_image(decoded.pixels, params)
    prepared = engine.prepare(source, params)
    return prepared, batcher.submit(prepared.model_input)


def _alpha(engine: MattingEngine, image: DecodedImage, output: torch.Tensor) -> torch.Tensor:
    """The image's alpha matte from what the model's side returned for it."""
    return engine.alpha(image, output) if isinstance(image, PreparedImage) else output


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
    waiting: deque[tuple[DecodedImage, Future[BatchResult]]] = deque()
    alphas: list[npt.NDArray[np.uint8]] = []

    def collect_oldest() -> None:
        prepared, future = waiting.popleft()
        batch = future.result()
        timings["batch_wait"] += batch.wait_ms
        timings["inference"] += batch.inference_ms
        alphas.append(_alpha(engine, prepared, batch.logits).cpu().numpy())

    for frame in animation.frames:
        if len(waiting) >= window:
            collect_oldest()
        with cpu.held():
            prepared, future = _send(engine, batcher, frame, params)
        timings["preprocess"] += prepared.timings_ms.get("preprocess", 0.0)
        waiting.append((prepared, future))
    while waiting:
        collect_oldest()
    with cpu.held():
        return engine.finish_animation(animation, alphas, params, timings)
