"""The GPU loop: dynamic batches of what the jobs prepared, run by one thread that owns the model.

Job threads call `submit` with a prepared model input and block on the returned future while
other jobs download, decode, encode and upload. The loop is itself a two-stage pipeline: one
thread forms the next batch (whatever is ready, up to the batch limit, waiting at most
`max_wait_s` for it to fill) and stacks it into the model's input while the other thread runs
the model on the current one, so the model never waits for a batch to be formed. Inputs of
different shapes (jobs at other resolutions) run as separate batches. On CUDA out-of-memory the
batch is split in two and retried, and the lower limit is kept for the rest of the process's life
for inputs of that shape only: a rare large resolution that runs out of memory leaves the batch
limit of the others as it was.

A device that fails every batch (a persistent CUDA error) would otherwise fail every job it is
given, fastest of all workers: after `max_failed_batches` failed batches in a row (a batch that
succeeds resets the count; out-of-memory is not a failure of the device) the loop stops, tells
`on_failed` why, and fails what still waits with `BatcherStoppedError`, whose jobs go back to
the queue unspent.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import torch

from toonq.shared.logging import get_logger
from toonq.worker import metrics

log = get_logger(__name__)

Stacked = TypeVar("Stacked")

#: How often the idle loop wakes up to beat and to notice a stop.
_IDLE_TICK_S = 1.0
#: How often a batch that is filling while the model is busy checks whether the model is free.
_BUSY_TICK_S = 0.002


@dataclass(frozen=True)
class BatchResult:
    logits: torch.Tensor
    #: This image's batch: its size, the model time and how long the image waited for it.
    batch_size: int
    inference_ms: float
    wait_ms: float


@dataclass
class _Request:
    model_input: torch.Tensor
    future: Future[BatchResult] = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.model_input.shape)


class BatcherStoppedError(RuntimeError):
    """The GPU loop was stopped: the job cannot run in this process any more."""


class Batcher(Protocol):
    """What a job's threads hand model inputs to: the GPU loop of their own process, or of the
    worker's model process (`toonq.worker.model_link.RemoteBatcher`)."""

    max_batch_size: int

    def start(self) -> None: ...

    def stop(self, timeout: float | None = None) -> None: ...

    def submit(self, model_input: torch.Tensor) -> Future[BatchResult]:
        """Queue one image's model input (1×C×H×W); the future holds its logits."""
        ...

    def run(self, model_input: torch.Tensor) -> BatchResult:
        """Submit and wait."""
        ...


class InferenceBatcher(Generic[Stacked]):
    """`stack` turns the inputs of one batch into what `run` takes; `run` returns one output
    per input. They run in different threads, one batch apart. `max_failed_batches` 0 never
    stops the loop for failed batches."""

    def __init__(
        self,
        stack: Callable[[Sequence[torch.Tensor]], Stacked],
        run: Callable[[Stacked], list[torch.Tensor]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        on_beat: Callable[[], None] | None = None,
        max_failed_batches: int = 0,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._stack = stack
        self._run_stacked = run
        #: The limit configured, which each shape keeps until it runs out of memory.
        self.max_batch_size = max_batch_size
        self._lowered_limits: dict[tuple[int, ...], int] = {}
        self._max_wait_s = max_wait_s
        self._on_beat = on_beat or (lambda: None)
        self._max_failed_batches = max_failed_batches
        self._on_failed = on_failed or (lambda _reason: None)
        self._failed_batches = 0
        self._last_failure = ""
        self._stop_reason = "the GPU loop stopped"
        #: Orders `submit` and `stop`: nothing is queued once stopping began.
        self._submit_lock = threading.Lock()
        self._requests: queue.Queue[_Request] = queue.Queue()
        #: Ready requests of another shape than the last batch's, served next.
        self._held: list[_Request] = []
        #: At most one formed batch waits for the model: memory stays bounded.
        self._formed: queue.Queue[tuple[list[_Request], Stacked | BaseException]] = queue.Queue(1)
        self._runner_idle = threading.Event()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._form_batches, name="toonq-batcher", daemon=True),
            threading.Thread(target=self._run_batches, name="toonq-gpu-loop", daemon=True),
        ]
        metrics.set_max_batch_size(max_batch_size)

    def batch_limit(self, shape: Sequence[int]) -> int:
        """The largest batch formed of inputs of `shape` (one input's shape)."""
        return self._lowered_limits.get(tuple(shape), self.max_batch_size)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the batch in progress; requests still waiting fail."""
        with self._submit_lock:
            self._stopped.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        stranded = self._drain()
        while not self._formed.empty():
            stranded += self._formed.get_nowait()[0]
        for request in stranded:
            request.future.set_exception(BatcherStoppedError(self._stop_reason))

    def submit(self, model_input: torch.Tensor) -> Future[BatchResult]:
        """Queue one image's model input (1×C×H×W); the future holds its logits."""
        with self._submit_lock:
            if self._stopped.is_set():
                raise BatcherStoppedError(self._stop_reason)
            request = _Request(model_input)
            self._requests.put(request)
        return request.future

    def run(self, model_input: torch.Tensor) -> BatchResult:
        """Submit and wait: what a job thread calls."""
        return self.submit(model_input).result()

    # --- The loop ------------------------------------------------------------------------

    def _form_batches(self) -> None:
        while not self._stopped.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            try:
                stacked: Stacked | BaseException = self._stack([r.model_input for r in batch])
            except Exception as exc:
                stacked = exc
            while not self._stopped.is_set():
                try:
                    self._formed.put((batch, stacked), timeout=_IDLE_TICK_S)
                    break
                except queue.Full:
                    continue
            else:
                self._requests_back(batch)

    def _run_batches(self) -> None:
        # The liveness beat comes from here: a model call that hangs stops it.
        while not self._stopped.is_set():
            self._on_beat()
            self._runner_idle.set()
            try:
                batch, stacked = self._formed.get(timeout=_IDLE_TICK_S)
            except queue.Empty:
                continue
            self._runner_idle.clear()
            if isinstance(stacked, BaseException):
                for request in batch:
                    request.future.set_exception(stacked)
                self._count_failure(stacked)
            else:
                self._run(batch, stacked)
            if self._max_failed_batches and self._failed_batches >= self._max_failed_batches:
                self._fail_device()

    def _requests_back(self, batch: list[_Request]) -> None:
        self._held = batch + self._held

    def _next_batch(self) -> list[_Request]:
        """The first ready request, then everything of its shape that is ready or arrives up
        to the batch limit: for as long as the model is busy with the previous batch (a
        batch formed early would run half empty), then for at most the wait, counted from
        the first request's arrival."""
        try:
            first = self._held.pop(0) if self._held else self._requests.get(timeout=_IDLE_TICK_S)
        except queue.Empty:
            return []
        batch = [first]
        limit = self.batch_limit(first.shape)
        same_shape_held = [r for r in self._held if r.shape == first.shape]
        for request in same_shape_held[: limit - 1]:
            self._held.remove(request)
            batch.append(request)
        deadline = first.submitted + self._max_wait_s
        while len(batch) < limit:
            busy = not self._runner_idle.is_set()
            timeout = _BUSY_TICK_S if busy else deadline - time.perf_counter()
            try:
                # Whatever is ready now never waits; the wait only applies to an empty queue.
                request = self._requests.get(timeout=max(0.0, timeout))
            except queue.Empty:
                if busy and not self._stopped.is_set():
                    continue
                break
            if request.shape == first.shape:
                batch.append(request)
            else:
                self._held.append(request)
        return batch

    def _run(self, batch: list[_Request], stacked: Stacked | None = None) -> None:
        started = time.perf_counter()
        try:
            if stacked is None:
                stacked = self._stack([request.model_input for request in batch])
            logits = self._run_stacked(stacked)
        except torch.cuda.OutOfMemoryError as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            shape = batch[0].shape
            self._lower_limit(shape, (len(batch) + 1) // 2)
            torch.cuda.empty_cache()
            step = self.batch_limit(shape)
            for start in range(0, len(batch), step):
                self._run(batch[start : start + step])
            return
        except BaseException as exc:
            for request in batch:
                request.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            self._count_failure(exc)
            return
        self._failed_batches = 0
        inference_ms = (time.perf_counter() - started) * 1000
        metrics.observe_batch(len(batch))
        for request, logit in zip(batch, logits, strict=True):
            request.future.set_result(
                BatchResult(
                    logits=logit,
                    batch_size=len(batch),
                    inference_ms=inference_ms,
                    wait_ms=(started - request.submitted) * 1000,
                )
            )

    def _count_failure(self, exc: BaseException) -> None:
        self._failed_batches += 1
        self._last_failure = f"{type(exc).__name__}: {exc}"
        metrics.record_batch_failure()

    def _fail_device(self) -> None:
        """Stop for good: the device failed batch after batch."""
        self._stop_reason = (
            f"the GPU loop stopped after {self._failed_batches} failed batches in a row "
            f"(the last: {self._last_failure})"
        )
        log.error(
            "device_failed",
            failed_batches=self._failed_batches,
            last_error=self._last_failure,
        )
        self._on_failed(self._stop_reason)
        self.stop()

    def _lower_limit(self, shape: tuple[int, ...], limit: int) -> None:
        if limit < self.batch_limit(shape):
            self._lowered_limits[shape] = limit
            log.warning(
                "batch_limit_lowered",
                max_batch_size=limit,
                input_shape=list(shape),
                reason="CUDA out of memory",
            )
            metrics.record_oom_split(limit)

    def _drain(self) -> list[_Request]:
        drained, self._held = self._held, []
        while True:
            try:
                drained.append(self._requests.get_nowait())
            except queue.Empty:
                return drained
