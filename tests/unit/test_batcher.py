"""The GPU loop's dynamic batching, with a stand-in model that records the batches it ran."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from toonq.worker.batcher import BatcherStoppedError, InferenceBatcher


class RecordingModel:
    """Doubles its inputs; can be told to run out of memory above a batch size, to fail once,
    or to fail every batch (`broken`, a persistent CUDA error)."""

    def __init__(self, *, oom_above: int | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.oom_above = oom_above
        self.delay_s = delay_s
        self.fail_next = False
        self.broken = False
        self.lock = threading.Lock()

    def stack(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(inputs))

    def run(self, batch: torch.Tensor) -> list[torch.Tensor]:
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        time.sleep(self.delay_s)
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device fault")
        with self.lock:
            self.batches.append(len(batch))
        return list(torch.split(batch * 2, 1))


def image(value: float, size: int = 8) -> torch.Tensor:
    return torch.full((1, 3, size, size), float(value))


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


def started(model: RecordingModel, **options: float) -> InferenceBatcher[torch.Tensor]:
    batcher = InferenceBatcher(
        model.stack,
        model.run,
        max_batch_size=int(options.get("max_batch_size", 4)),
        max_wait_s=options.get("max_wait_s", 0.2),
    )
    batcher.start()
    return batcher


@pytest.fixture
def batcher(model: RecordingModel) -> Iterator[InferenceBatcher[torch.Tensor]]:
    batcher = started(model)
    yield batcher
    batcher.stop(timeout=5)


def test_each_job_gets_its_own_result(batcher: InferenceBatcher[torch.Tensor]) -> None:
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda v: batcher.run(image(v)), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert [float(r.logits.mean()) for r in results] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]


def test_requests_that_arrive_within_the_wait_share_a_batch_up_to_the_limit(
    batcher: InferenceBatcher[torch.Tensor], model: RecordingModel
) -> None:
    futures = [batcher.submit(image(v)) for v in range(5)]
    results = [f.result(timeout=5) for f in futures]
    assert model.batches == [4, 1]
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 1]


def test_a_lone_request_runs_after_the_wait_without_company(
    batcher: InferenceBatcher[torch.Tensor], model: RecordingModel
) -> None:
    result = batcher.run(image(1.0))
    assert model.batches == [1]
    assert result.wait_ms >= 150  # it waited (most of) the 200 ms for others to join


def test_inputs_of_different_shapes_run_in_separate_batches(
    batcher: InferenceBatcher[torch.Tensor], model: RecordingModel
) -> None:
    futures = [batcher.submit(image(1.0, size)) for size in (8, 16, 8, 16, 8)]
    results = [f.result(timeout=5) for f in futures]
    assert sorted(model.batches) == [2, 3]
    assert [r.logits.shape[-1] for r in results] == [8, 16, 8, 16, 8]


def test_out_of_memory_splits_the_batch_and_keeps_the_lower_limit() -> None:
    model = RecordingModel(oom_above=2)
    batcher = started(model, max_batch_size=8)
    try:
        futures = [batcher.submit(image(v)) for v in range(6)]
        values = [float(f.result(timeout=5).logits.mean()) for f in futures]
        assert values == [2.0 * v for v in range(6)]
        assert batcher.max_batch_size == 2
        assert max(model.batches) == 2
        model.batches.clear()
        later = [batcher.submit(image(v)) for v in range(4)]
        for future in later:
            future.result(timeout=5)
        assert model.batches == [2, 2]  # no new out-of-memory round trip
    finally:
        batcher.stop(timeout=5)


def test_out_of_memory_on_a_single_image_fails_that_job() -> None:
    batcher = started(RecordingModel(oom_above=0), max_batch_size=4)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            batcher.run(image(1.0))
    finally:
        batcher.stop(timeout=5)


def test_a_model_error_fails_the_batch_and_the_loop_goes_on(
    batcher: InferenceBatcher[torch.Tensor], model: RecordingModel
) -> None:
    model.fail_next = True
    with pytest.raises(RuntimeError, match="device fault"):
        batcher.run(image(1.0))
    assert float(batcher.run(image(3.0)).logits.mean()) == 6.0


def test_stopping_fails_what_still_waits_and_refuses_new_work() -> None:
    model = RecordingModel(delay_s=0.5)
    batcher = started(model, max_batch_size=1, max_wait_s=0)
    running = batcher.submit(image(1.0))
    time.sleep(0.1)  # the first request is in the model
    waiting = batcher.submit(image(2.0))
    batcher.stop(timeout=5)
    assert float(running.result(timeout=5).logits.mean()) == 2.0
    with pytest.raises(BatcherStoppedError):
        waiting.result(timeout=5)
    with pytest.raises(BatcherStoppedError):
        batcher.submit(image(3.0))


def test_the_loop_beats_while_idle() -> None:
    beats = threading.Event()
    model = RecordingModel()
    batcher = InferenceBatcher(
        model.stack, model.run, max_batch_size=1, max_wait_s=0, on_beat=beats.set
    )
    batcher.start()
    try:
        assert beats.wait(timeout=5)
    finally:
        batcher.stop(timeout=5)


def test_the_next_batch_is_stacked_while_the_model_runs_the_current_one() -> None:
    events: list[tuple[str, float]] = []
    model = RecordingModel(delay_s=0.5)

    def stack(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        events.append(("stacked", time.perf_counter()))
        return model.stack(inputs)

    def run(batch: torch.Tensor) -> list[torch.Tensor]:
        events.append(("run", time.perf_counter()))
        return model.run(batch)

    batcher = InferenceBatcher(stack, run, max_batch_size=1, max_wait_s=0)
    batcher.start()
    try:
        first, second = batcher.submit(image(1.0)), batcher.submit(image(2.0))
        first.result(timeout=5)
        second.result(timeout=5)
    finally:
        batcher.stop(timeout=5)
    stacked = [at for kind, at in events if kind == "stacked"]
    runs = [at for kind, at in events if kind == "run"]
    assert len(stacked) == len(runs) == 2
    # The second batch was ready before the first one left the model (0.5 s), and ran at once.
    assert stacked[1] < runs[0] + 0.4
    assert runs[1] - runs[0] < 0.5 + 0.2


# --- A device that fails every batch ------------------------------------------------------------


def failing_after(
    model: RecordingModel, failures: int, **options: int
) -> tuple[InferenceBatcher[torch.Tensor], list[str]]:
    """A started batcher that stops after `failures` failed batches in a row, and the reasons
    it gave for stopping."""
    reasons: list[str] = []
    batcher = InferenceBatcher(
        model.stack,
        model.run,
        max_batch_size=options.get("max_batch_size", 1),
        max_wait_s=0,
        max_failed_batches=failures,
        on_failed=reasons.append,
    )
    batcher.start()
    return batcher, reasons


def test_failed_batches_in_a_row_stop_the_loop_and_say_why() -> None:
    model = RecordingModel()
    model.broken = True
    batcher, reasons = failing_after(model, 3)
    try:
        for _ in range(3):
            with pytest.raises(RuntimeError, match="illegal memory access"):
                batcher.run(image(1.0))
        # Refused at once, or failed when the loop stops if it came in just before.
        with pytest.raises(BatcherStoppedError, match="3 failed batches in a row") as refused:
            batcher.run(image(1.0))
        assert "illegal memory access" in str(refused.value)
        assert len(reasons) == 1
        assert reasons[0] == str(refused.value)
    finally:
        batcher.stop(timeout=5)


def test_requests_waiting_when_the_loop_stops_fail_as_stopped_not_as_the_device() -> None:
    model = RecordingModel(delay_s=0.5)  # the first batch fails after the others came in
    model.broken = True
    batcher, reasons = failing_after(model, 1)
    try:
        futures = [batcher.submit(image(v)) for v in range(3)]
        with pytest.raises(RuntimeError, match="illegal memory access"):
            futures[0].result(timeout=5)
        for waiting in futures[1:]:
            with pytest.raises(BatcherStoppedError):
                waiting.result(timeout=5)
        assert len(reasons) == 1
    finally:
        batcher.stop(timeout=5)


def test_a_batch_that_succeeds_resets_the_count() -> None:
    model = RecordingModel()
    batcher, reasons = failing_after(model, 2)
    try:
        for _ in range(3):
            model.fail_next = True
            with pytest.raises(RuntimeError, match="device fault"):
                batcher.run(image(1.0))
            assert float(batcher.run(image(2.0)).logits.mean()) == 4.0
        assert reasons == []
    finally:
        batcher.stop(timeout=5)


def test_out_of_memory_is_not_a_failure_of_the_device() -> None:
    batcher, reasons = failing_after(RecordingModel(oom_above=0), 2, max_batch_size=4)
    try:
        for _ in range(4):
            with pytest.raises(torch.cuda.OutOfMemoryError):
                batcher.run(image(1.0))
        assert reasons == []
        with pytest.raises(torch.cuda.OutOfMemoryError):
            batcher.run(image(1.0))  # still taking work
    finally:
        batcher.stop(timeout=5)
