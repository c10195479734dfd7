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

import numpy as np
import pytest
import torch

from tests.support import matte_one, png_bytes
from tests.unit.test_animated_jobs import gif_bytes
from tests.unit.test_batcher import RecordingModel, image
from toonq.shared.errors import SharedMemoryFullError
from toonq.shared.job import JobParams
from toonq.worker.batcher import BatcherStoppedError, InferenceBatcher
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.matting import MattingEngine, RemoteModel
from toonq.worker.engine.standin import StandInModel
from toonq.worker.engine.weights import LoadedModel, load_model
from toonq.worker.matte_input import matte_input
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
        # Unused by inputs sent as tensors: the recording model stands for the engine's.
        engine=MattingEngine(LoadedModel(StandInModel(0), "standin:0", None), device="cpu"),
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
    # Told after the waiting futures fail, from the link's reader thread.
    assert lost.wait(timeout=5)
    assert failures == ["the worker's model process is gone"]
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


# --- A model process that prepares images (TOONQ_PREPARE_IN=model-process) -----------------

RESOLUTION = 64
PARAMS = JobParams(bg_color="#808080", format="png", resolution=RESOLUTION)


@dataclass
class ImageLink:
    engine: MattingEngine
    remote: RemoteBatcher


@pytest.fixture
def image_link(tmp_path: Path) -> Iterator[ImageLink]:
    engine = MattingEngine(load_model("random:tiny"), device="cpu", resolution=RESOLUTION)
    batcher = InferenceBatcher(
        engine.stack_batch, engine.run_batch, max_batch_size=4, max_wait_s=0.05
    )
    ours, theirs = multiprocessing.Pipe()
    server = ModelServer(
        ours,
        batcher,
        MappedBlocks(tmp_path),
        engine=engine,
        on_readiness=lambda ready: None,
        on_prepared=lambda: None,
        name="test",
    )
    remote = RemoteBatcher(
        theirs,
        # Room for four float32 model inputs: an image's block is kept once its job is done.
        BlockPool(tmp_path, keep_bytes=4 * 3 * RESOLUTION * RESOLUTION * 4),
        max_batch_size=4,
        prepares_images=True,
    )
    batcher.start()
    server.start()
    remote.start()
    yield ImageLink(engine, remote)
    remote.stop()
    batcher.stop(timeout=5)
    server.stop()
    ours.close()
    theirs.close()


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[: height // 2, :, 3] = 0  # a transparent half, composited onto the job's colour
    return pixels


def test_images_sent_whole_come_back_as_the_alpha_the_engine_makes_of_them(
    image_link: ImageLink,
) -> None:
    engine = image_link.engine
    cases = [
        (_pixels(48, 80, seed), JobParams(bg_color=colour, format="png", resolution=RESOLUTION))
        for seed, colour in enumerate(["#808080", "#ff0037", "#00ff00", "#123456"])
    ]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(image_link.remote.submit_image, p, params) for p, params in cases]
        alphas = [future.result().result().logits for future in futures]
    for (pixels, params), alpha in zip(cases, alphas, strict=True):
        prepared = engine.prepare(pixels.copy(), params)
        (logits,) = engine.run_batch(engine.stack_batch([prepared.model_input]))
        expected = engine.alpha(prepared, logits)
        assert alpha.dtype == torch.uint8
        assert alpha.shape == (48, 80)
        assert torch.equal(alpha, expected)


def test_an_image_the_model_process_cannot_prepare_is_a_model_call_error(
    image_link: ImageLink,
) -> None:
    future = image_link.remote.submit_image(_pixels(8, 8, 0)[..., :3].copy(), PARAMS)
    with pytest.raises(ModelCallError, match="H×W×4"):
        future.result()
    assert image_link.remote.submit_image(_pixels(8, 8, 1), PARAMS).result().logits.shape == (8, 8)


def test_a_job_sends_its_image_as_pixels_and_gets_the_cut_out_of_one_process(
    image_link: ImageLink, tmp_path: Path
) -> None:
    data = png_bytes((80, 48))
    job_side = MattingEngine(RemoteModel("random:tiny", None), device="cpu", resolution=RESOLUTION)
    result = matte_input(job_side, image_link.remote, CpuSlots(1), data, PARAMS)
    assert result.data == matte_one(image_link.engine, data, PARAMS).data
    # What crossed: the image's pixels, a byte a channel, not a float32 model input.
    assert {block.stat().st_size for block in tmp_path.iterdir()} == {48 * 80 * 4}


def test_an_animation_sent_frame_by_frame_as_pixels_matches_one_process(
    image_link: ImageLink,
) -> None:
    engine = image_link.engine
    local = InferenceBatcher(
        engine.stack_batch, engine.run_batch, max_batch_size=4, max_wait_s=0.01
    )
    local.start()
    try:
        expected = matte_input(engine, local, CpuSlots(1), gif_bytes(), PARAMS)
    finally:
        local.stop(timeout=5)
    job_side = MattingEngine(RemoteModel("random:tiny", None), device="cpu", resolution=RESOLUTION)
    result = matte_input(job_side, image_link.remote, CpuSlots(1), gif_bytes(), PARAMS)
    assert (result.frames, result.data) == (expected.frames, expected.data)
    assert result.frames > 1
