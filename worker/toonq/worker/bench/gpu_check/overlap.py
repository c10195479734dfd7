"""Whether a job's device work waits behind the batch the GPU loop is running.

A worker's job threads prepare their images on the device (upload, composite, resize,
normalise) and bring each alpha matte back, while the GPU loop runs the model on a batch. Work
queued on the same CUDA stream as the batch starts only once the batch is done, and a copy from
pageable host memory blocks its thread meanwhile: a job's few milliseconds would then take a
batch's tens. This part times both steps for one decoded image alone on the device, then while
another thread runs the worker's batches back to back, and the batches themselves; each step's
time counts until its device work is done (its stream synchronised). On a CPU the figures
only show that the part runs.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import torch

from toonq.shared.job import JobParams
from toonq.shared.settings import DEFAULT_BG_COLOR
from toonq.worker.bench.gpu_check.context import CheckContext
from toonq.worker.bench.report import Section, markdown_table
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.samples import anime_sample

NAME: Final = "overlap"
TITLE: Final = "A job's device work beside a running batch"
#: Timed calls of each step, alone and beside the batches (medians are reported).
_REPEAT: Final = 7
#: How long the batch thread may take to stop once asked (one batch, however slow).
_STOP_TIMEOUT_S: Final = 60.0


def run(ctx: CheckContext) -> Section:
    sizes = ctx.sizes
    engine = ctx.worker_engine()
    side = sizes.e2e_image_side
    pixels = np.asarray(anime_sample(seed=5, size=(side, side), transparent=True).convert("RGBA"))
    params = JobParams(bg_color=DEFAULT_BG_COLOR, format="png", resolution=sizes.resolution)
    prepared = engine.prepare(pixels, params)
    (logits,) = engine.run_batch(engine.stack_batch([prepared.model_input]))
    steps: dict[str, Callable[[], object]] = {
        "prepare": lambda: engine.prepare(pixels, params).model_input,
        "alpha_to_host": lambda: engine.alpha(prepared, logits).cpu(),
    }
    alone = {step: _median_ms(engine, call) for step, call in steps.items()}
    batch = [prepared.model_input] * sizes.worker_batch
    with _BatchesRunning(engine, batch) as running:
        beside = {step: _median_ms(engine, call) for step, call in steps.items()}
    data: dict[str, Any] = {
        "status": "ran",
        "device": str(engine.device),
        "image": f"{side}x{side}",
        "batch_size": sizes.worker_batch,
        "batch_ms": running.median_ms,
        "rows": [
            {"step": step, "alone_ms": alone[step], "beside_batch_ms": beside[step]}
            for step in steps
        ],
    }
    summary = ", ".join(
        f"{row['step']} {row['alone_ms']} ms alone, {row['beside_batch_ms']} ms beside a batch"
        for row in data["rows"]
    )
    return Section(NAME, TITLE, data, _markdown(data), f"{summary} ({running.median_ms} ms)")


def _median_ms(engine: MattingEngine, call: Callable[[], object]) -> float:
    """The median wall time of `call` until the device work it queued is done."""
    times = []
    for _ in range(_REPEAT):
        start = time.perf_counter()
        call()
        _wait_for_stream(engine.device)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def _wait_for_stream(device: torch.device) -> None:
    """Wait for what this thread's current stream has queued so far (nothing on a CPU)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class _BatchesRunning:
    """The worker's batch, run back to back by another thread, as the GPU loop does under load,
    from entering until leaving; `median_ms` is a batch's time, until its work is done."""

    def __init__(self, engine: MattingEngine, inputs: list[torch.Tensor]) -> None:
        self._engine = engine
        self._stacked = engine.stack_batch(inputs)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._times: list[float] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="overlap-batches", daemon=True)
        self.median_ms = 0.0

    def __enter__(self) -> _BatchesRunning:
        self._thread.start()
        self._started.wait()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(_STOP_TIMEOUT_S)
        if self._error is not None:
            raise self._error
        self.median_ms = round(statistics.median(self._times), 2) if self._times else 0.0

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                self._engine.run_batch(self._stacked)
                _wait_for_stream(self._engine.device)
                self._times.append((time.perf_counter() - start) * 1000)
                self._started.set()
        except BaseException as exc:  # raised again in the measuring thread
            self._error = exc
        finally:
            self._started.set()


def _markdown(data: dict[str, Any]) -> str:
    note = (
        f"One {data['image']} image on {data['device']}, alone and while another thread runs "
        f"batches of {data['batch_size']} back to back ({data['batch_ms']} ms each); each "
        "step timed until its device work is done."
    )
    table = markdown_table(
        ["step", "alone ms", "beside a batch ms"],
        [(row["step"], row["alone_ms"], row["beside_batch_ms"]) for row in data["rows"]],
    )
    return f"{note}\n\n{table}"
