"""The link between a job process and the model process of one worker (`TOONQ_JOB_PROCESSES`).

A job process's `RemoteBatcher` stands where the GPU loop stands in a single-process worker: its
job threads `submit` model inputs and wait on futures. It writes each input into a block of
shared memory (`shared_tensors`) and sends the block's name over a pipe; the model process's
`ModelServer` hands the input, in place, to its GPU loop (`InferenceBatcher`), which batches the
inputs of every job process together, writes each image's logits back into its block and
answers. Only names, shapes and timings cross the pipe.

A model process on a GPU prepares the images itself (`TOONQ_PREPARE_IN`): a job process sends
an image's decoded pixels (`submit_image`) with the job's parameters, the model process
composites, resizes and normalises them on its device, and the block comes back holding the
image's alpha matte at its own size. The job process decodes before and finishes after.

The GPU loop's errors keep their meaning across the link: a stopped loop (the device failed
batch after batch, or the model process is gone) is `BatcherStoppedError`, whose jobs go back to
the queue unspent, and the job process is told to stop taking messages; a failed batch is
`ModelCallError`, which the job retries as any unexpected error.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from toonq.shared.job import JobParams
from toonq.shared.logging import get_logger
from toonq.worker.batcher import BatcherStoppedError, BatchResult, InferenceBatcher
from toonq.worker.engine.matting import MattingEngine, PreparedImage
from toonq.worker.shared_tensors import Block, BlockPool, MappedBlocks, dense_stride, nbytes_of

log = get_logger(__name__)


class ModelCallError(RuntimeError):
    """The model process failed the batch that held this input."""


# --- Messages ------------------------------------------------------------------------------


class RunRequest(NamedTuple):
    """Run the input in `block` (`shape`, `dtype`, laid out by `stride`) through the model.
    With `params`, the block holds an image's decoded pixels (uint8 H×W×4), which the model
    process prepares with them, and the answer is the image's alpha matte."""

    request_id: int
    block: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    stride: tuple[int, ...]
    params: JobParams | None = None


class Finished(NamedTuple):
    """The logits (or alpha matte) of request `request_id` are in its block."""

    request_id: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    batch_size: int
    inference_ms: float
    wait_ms: float


class Refused(NamedTuple):
    """Request `request_id` has no logits: the loop had stopped, or its batch failed."""

    request_id: int
    stopped: bool
    message: str


class Stopped(NamedTuple):
    """The GPU loop stopped for good: take no more jobs."""

    reason: str


class Forget(NamedTuple):
    """These blocks are deleted: unmap them."""

    blocks: list[str]


class Prepared(NamedTuple):
    """A job process has everything it needs to take messages, and waits for `Start`."""


class Start(NamedTuple):
    """Every job process is prepared: take messages (the worker takes jobs all at once, as a
    single-process worker does once its model is warm)."""


class Readiness(NamedTuple):
    """A job process consumes messages (True) or stopped doing so (False)."""

    ready: bool


# --- The model process's side --------------------------------------------------------------


class ModelServer:
    """Serves one job process on `connection`: its requests go to `batcher`, their logits back
    into their blocks; `engine` prepares the images sent whole and makes their alpha mattes.
    `on_readiness` hears the job process's readiness."""

    def __init__(
        self,
        connection: Connection,
        batcher: InferenceBatcher[Any],
        blocks: MappedBlocks,
        *,
        engine: MattingEngine,
        on_readiness: Callable[[bool], None],
        on_prepared: Callable[[], None],
        name: str,
    ) -> None:
        self._connection = connection
        self._batcher = batcher
        self._blocks = blocks
        self._engine = engine
        self._on_readiness = on_readiness
        self._on_prepared = on_prepared
        self._replies: queue.Queue[Any] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read, name=f"{name}-requests", daemon=True),
            threading.Thread(target=self._write, name=f"{name}-replies", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def tell_stopped(self, reason: str) -> None:
        self._replies.put(Stopped(reason))

    def tell_start(self) -> None:
        self._replies.put(Start())

    def stop(self) -> None:
        """Stop answering (the job process has ended or is about to)."""
        self._replies.put(None)
        self._threads[1].join(timeout=5)

    def _read(self) -> None:
        while True:
            try:
                message = self._connection.recv()
            except (EOFError, OSError):
                return  # the job process ended
            if isinstance(message, RunRequest):
                self._run(message)
            elif isinstance(message, Forget):
                self._blocks.forget(message.blocks)
            elif isinstance(message, Readiness):
                self._on_readiness(message.ready)
            elif isinstance(message, Prepared):
                self._on_prepared()

    def _run(self, request: RunRequest) -> None:
        prepared = None
        try:
            model_input = self._blocks.tensor(
                request.block, request.shape, request.dtype, request.stride
            )
            if request.params is not None:
                prepared = self._engine.prepare(model_input.numpy(), request.params)
                model_input = prepared.model_input
            future = self._batcher.submit(model_input)
        except BatcherStoppedError as exc:
            self._replies.put(Refused(request.request_id, True, str(exc)))
            return
        except Exception as exc:
            self._replies.put(Refused(request.request_id, False, f"{type(exc).__name__}: {exc}"))
            return
        # Called in the GPU loop's thread: it only queues, the writer copies and answers.
        future.add_done_callback(partial(self._finished, request, prepared))

    def _finished(
        self, request: RunRequest, prepared: PreparedImage | None, future: Future[BatchResult]
    ) -> None:
        self._replies.put((request, prepared, future))

    def _write(self) -> None:
        while (item := self._replies.get()) is not None:
            reply = item if isinstance(item, Stopped | Refused | Start) else self._reply(*item)
            try:
                self._connection.send(reply)
            except (BrokenPipeError, EOFError, OSError):
                return

    def _reply(
        self, request: RunRequest, prepared: PreparedImage | None, future: Future[BatchResult]
    ) -> Finished | Refused:
        exc = future.exception()
        if exc is not None:
            stopped = isinstance(exc, BatcherStoppedError)
            return Refused(request.request_id, stopped, f"{type(exc).__name__}: {exc}")
        result = future.result()
        try:
            output = (
                result.logits if prepared is None else self._engine.alpha(prepared, result.logits)
            )
            shape = tuple(output.shape)
            # Over the input, which the batch no longer needs: the logits, or the alpha matte
            # (a byte a pixel against the pixels' four), are the smaller.
            self._blocks.tensor(request.block, shape, output.dtype).copy_(output)
        except Exception as exc:
            return Refused(request.request_id, False, f"{type(exc).__name__}: {exc}")
        return Finished(
            request.request_id,
            shape,
            output.dtype,
            result.batch_size,
            result.inference_ms,
            result.wait_ms,
        )


# --- A job process's side ------------------------------------------------------------------


class RemoteBatcher:
    """What a job process's threads submit model inputs (or images) to, as they would to the
    GPU loop."""

    def __init__(
        self,
        connection: Connection,
        blocks: BlockPool,
        *,
        max_batch_size: int,
        prepares_images: bool = False,
        on_failed: Callable[[str], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """`prepares_images`: the model process prepares images itself, which are then sent
        with `submit_image`. `on_failed` hears why the GPU loop stopped (or the model process
        is gone, after which `on_lost` is called too)."""
        self.max_batch_size = max_batch_size
        self.prepares_images = prepares_images
        self._connection = connection
        self._blocks = blocks
        self._on_failed = on_failed or (lambda _reason: None)
        self._on_lost = on_lost or (lambda: None)
        self._ids = itertools.count()
        self._pending: dict[int, tuple[Future[BatchResult], Block]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop_reason: str | None = None
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, name="toonq-model-link", daemon=True)

    def start(self) -> None:
        if not self._reader.is_alive():
            self._reader.start()

    def wait_for_start(self) -> None:
        """Say this job process is prepared, and wait until every one is (`Start`), or until
        the link is lost."""
        self.start()
        self._send(Prepared())
        self._started.wait()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new inputs and fail those still waiting."""
        self._fail_all("the job process stopped")

    def submit(self, model_input: torch.Tensor) -> Future[BatchResult]:
        return self._submit(model_input, None)

    def submit_image(self, pixels: npt.NDArray[np.uint8], params: JobParams) -> Future[BatchResult]:
        """Queue one image's decoded pixels (uint8 H×W×4) for a model process that prepares
        images (`prepares_images`); the future holds its alpha matte (uint8 H×W) as its
        `logits`."""
        return self._submit(torch.from_numpy(pixels), params)

    def _submit(self, tensor: torch.Tensor, params: JobParams | None) -> Future[BatchResult]:
        shape, dtype = tuple(tensor.shape), tensor.dtype
        # In its own layout: a copy in one pass.
        stride = dense_stride(tensor)
        block = self._blocks.take(nbytes_of(shape, dtype))
        block.tensor(shape, dtype, stride).copy_(tensor)
        future: Future[BatchResult] = Future()
        with self._lock:
            # Registered under the lock that `_fail_all` takes: never left out of a stop.
            stop_reason = self._stop_reason
            if stop_reason is None:
                request_id = next(self._ids)
                self._pending[request_id] = (future, block)
        if stop_reason is not None:
            self._give_back(block)
            raise BatcherStoppedError(stop_reason)
        self._send(RunRequest(request_id, block.name, shape, dtype, stride, params))
        return future

    def run(self, model_input: torch.Tensor) -> BatchResult:
        return self.submit(model_input).result()

    def report_readiness(self, ready: bool) -> None:
        self._send(Readiness(ready))

    def _give_back(self, block: Block) -> None:
        if dropped := self._blocks.give_back(block):
            self._send(Forget(dropped))

    def _send(self, message: object) -> None:
        try:
            with self._send_lock:
                self._connection.send(message)
        except (BrokenPipeError, EOFError, OSError):
            self._lost()

    def _read(self) -> None:
        while True:
            try:
                message = self._connection.recv()
            except (EOFError, OSError):
                self._lost()
                return
            if isinstance(message, Finished):
                self._finish(message)
            elif isinstance(message, Refused):
                self._refuse(message)
            elif isinstance(message, Stopped):
                self._fail_all(message.reason)
                self._on_failed(message.reason)
            elif isinstance(message, Start):
                self._started.set()

    def _take(self, request_id: int) -> tuple[Future[BatchResult], Block] | None:
        with self._lock:
            return self._pending.pop(request_id, None)

    def _finish(self, message: Finished) -> None:
        if (taken := self._take(message.request_id)) is None:
            return
        future, block = taken
        logits = block.tensor(message.shape, message.dtype).clone()
        self._give_back(block)
        future.set_result(
            BatchResult(logits, message.batch_size, message.inference_ms, message.wait_ms)
        )

    def _refuse(self, message: Refused) -> None:
        if (taken := self._take(message.request_id)) is None:
            return
        future, block = taken
        self._give_back(block)
        error = BatcherStoppedError if message.stopped else ModelCallError
        future.set_exception(error(message.message))

    def _lost(self) -> None:
        reason = "the worker's model process is gone"
        self._started.set()  # nothing to wait for any more
        if self._fail_all(reason):
            log.error("model_process_lost")
            self._on_failed(reason)
            self._on_lost()

    def _fail_all(self, reason: str) -> bool:
        """Stop for good with `reason`; True the first time."""
        with self._lock:
            first = self._stop_reason is None
            if first:
                self._stop_reason = reason
            pending, self._pending = self._pending, {}
        # Their blocks are not given back: the model process may still be writing into them.
        for future, _block in pending.values():
            future.set_exception(BatcherStoppedError(reason))
        return first
