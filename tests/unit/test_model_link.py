"""A job process's `RemoteBatcher` and the model process's `ModelServer` over a real pipe and real
shared memory, the two ends in one process: the GPU loop's answers, errors and stop cross the
link with their meaning."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.unit.test_batcher import RecordingModel, image
from toonq.shared.errors import SharedMemoryFullError
from toonq.worker.batcher import BatcherStoppedError, InferenceBatcher
from toonq.worker.model_link import ModelCallError, ModelServer, RemoteBatcher
from toonq.worker.shared_tensors import BlockPool, MappedBlocks

#: Freed blocks a job process keeps: a few of the tests' 8×8 inputs.
KEEP_BYTES = 4 * 3 * 8 * 8 * 4


@dataclass
class Link:
    model: RecordingModel
    batcher: InferenceBatcher[torch.Tensor]
    server: ModelServer
    remote: RemoteBatcher
    readiness: list[bool] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    device_failures: list[str] = field(default_factory=list)


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    model = RecordingModel()
    readiness: list[bool] = []
    failures: list[str] = []
    device_failures: list[str] = []
    servers: list[ModelServer] = []

    def device_failed(reason: str) -> None:
        device_failures.append(reason)
        for server in servers:
            server.tell_stopped(reason)

    batcher = InferenceBatcher(
        model.stack,
        model.run,
        max_batch_size=4,
        max_wait_s=0.05,
        max_failed_batches=2,
        on_failed=device_failed,
    )
    ours, theirs = multiprocessing.Pipe()

    def server_start_once() -> None:  # one job process: prepared is everyone prepared
        servers[0].tell_start()

    server = ModelServer(
        ours,
        batcher,
        MappedBlocks(tmp_path),
        on_readiness=readiness.append,
        on_prepared=server_start_once,
        name="test",
    )
    servers.append(server)
    remote = RemoteBatcher(
        theirs,
        BlockPool(tmp_path, keep_bytes=KEEP_BYTES),
        max_batch_size=4,
        on_failed=failures.append,
    )
    batcher.start()
    server.start()
    remote.start()
    yield Link(model, batcher, server, remote, readiness, failures, device_failures)
    remote.stop()
    batcher.stop(timeout=5)
    server.stop()
    ours.close()
    theirs.close()


def test_inputs_come_back_as_their_logits_batched_with_each_other(link: Link) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: link.remote.run(image(n)), range(8)))
    for n, result in enumerate(results):
        assert torch.equal(result.logits, image(n) * 2)
    assert sum(link.model.batches) == 8
    assert max(link.model.batches) > 1
    assert all(result.batch_size in link.model.batches for result in results)


def test_blocks_are_reused_for_inputs_of_one_size(link: Link, tmp_path: Path) -> None:
    for n in range(5):
        assert torch.equal(link.remote.run(image(n)).logits, image(n) * 2)
    assert len(list(tmp_path.iterdir())) == 1


def test_a_failed_batch_is_a_model_call_error(link: Link) -> None:
    link.model.fail_next = True
    with pytest.raises(ModelCallError, match="device fault"):
        link.remote.run(image(1))
    assert torch.equal(link.remote.run(image(2)).logits, image(2) * 2)
    assert link.failures == []


def test_a_device_that_fails_batch_after_batch_stops_the_job_process(link: Link) -> None:
    link.model.broken = True
    for _ in range(2):
        with pytest.raises((ModelCallError, BatcherStoppedError)):
            link.remote.run(image(1))
    link.batcher.stop(timeout=5)  # joined: the loop has told the server
    with pytest.raises(BatcherStoppedError):
        link.remote.run(image(1))
    assert link.device_failures
    assert link.failures == link.device_failures


def test_a_stopped_model_process_refuses_inputs_as_stopped(link: Link) -> None:
    link.batcher.stop(timeout=5)
    with pytest.raises(BatcherStoppedError):
        link.remote.run(image(1))


def test_a_lost_model_process_fails_what_waits_and_what_comes(tmp_path: Path) -> None:
    ours, theirs = multiprocessing.Pipe()
    failures: list[str] = []
    lost = threading.Event()
    remote = RemoteBatcher(
        theirs,
        BlockPool(tmp_path, keep_bytes=KEEP_BYTES),
        max_batch_size=1,
        on_failed=failures.append,
        on_lost=lost.set,
    )
    remote.start()
    waiting = remote.submit(image(1))  # nobody answers
    ours.close()
    with pytest.raises(BatcherStoppedError, match="model process is gone"):
        waiting.result(timeout=5)
    with pytest.raises(BatcherStoppedError):
        remote.submit(image(2))
    assert failures == ["the worker's model process is gone"]
    assert lost.is_set()
    theirs.close()


def test_readiness_reaches_the_model_process(link: Link) -> None:
    link.remote.report_readiness(True)
    link.remote.report_readiness(False)
    link.remote.run(image(0))  # after the readiness, in order on the pipe
    assert link.readiness == [True, False]


def test_a_block_name_that_leaves_the_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a block name"):
        MappedBlocks(tmp_path).tensor("../etc", (1,), torch.uint8)


def test_blocks_past_what_a_job_process_keeps_are_deleted_and_unmapped(
    link: Link, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: link.remote.run(image(n)), range(8)))
    # Up to 8 blocks were in use at once; 4 are kept, the others deleted.
    assert len(list(tmp_path.iterdir())) == 4
    assert torch.equal(link.remote.run(image(9)).logits, image(9) * 2)


def test_a_full_shared_memory_folder_is_a_transient_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(SharedMemoryFullError, match="no room"):
        BlockPool(tmp_path, keep_bytes=0).take(1 << 60)
    assert list(tmp_path.iterdir()) == []


def test_an_input_laid_out_channels_last_crosses_as_it_is(link: Link) -> None:
    channels_last = torch.rand(1, 8, 8, 3).permute(0, 3, 1, 2)
    assert torch.equal(link.remote.run(channels_last).logits, channels_last * 2)


def test_an_input_with_gaps_crosses_copied_dense(link: Link) -> None:
    every_other = torch.rand(1, 3, 8, 16)[..., ::2]
    assert torch.equal(link.remote.run(every_other).logits, every_other * 2)


def test_a_job_process_takes_messages_once_the_model_process_says_start(link: Link) -> None:
    waiter = threading.Thread(target=link.remote.wait_for_start)
    waiter.start()
    waiter.join(timeout=10)
    assert not waiter.is_alive()


def test_a_job_process_waiting_to_start_stops_waiting_when_the_model_process_is_gone(
    tmp_path: Path,
) -> None:
    ours, theirs = multiprocessing.Pipe()
    remote = RemoteBatcher(theirs, BlockPool(tmp_path, keep_bytes=KEEP_BYTES), max_batch_size=1)
    waiter = threading.Thread(target=remote.wait_for_start)
    waiter.start()
    ours.recv()  # its Prepared
    ours.close()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    theirs.close()
