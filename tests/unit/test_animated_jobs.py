"""Animated inputs through the one path every job takes (`matte_input`): the frames batched in
the GPU loop, the timing kept, the colours under the new alpha, steady edges, sticker
finishing, presets, and the same through the queue's processor and `toonq matte`."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageSequence

from toonq.producer.cli.main import cli
from toonq.shared.job import Job, JobParams, JobSpec, JobStatus, Outcome
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import UriPolicy
from toonq.shared.storage.local import LocalStore
from toonq.worker.batcher import InferenceBatcher
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.animated_encode import encode_animated_webp, encode_apng
from toonq.worker.engine.animation import Animation
from toonq.worker.engine.matting import MattingEngine, StackedBatch
from toonq.worker.engine.weights import load_model
from toonq.worker.lease import LeaseKeeper
from toonq.worker.matte_input import matte_input
from toonq.worker.memory import MemoryBudget
from toonq.worker.processor import WorkerContext, process_job

RESOLUTION = 64
SIZE = (48, 40)
DURATIONS = [40, 80, 120, 60, 100, 50]


def params(**changes: Any) -> JobParams:
    return replace(JobParams(bg_color="#808080", format="png", resolution=RESOLUTION), **changes)


def frames_rgba(count: int = len(DURATIONS)) -> list[npt.NDArray[np.uint8]]:
    """A square that moves across a still background: opaque, distinct frames."""
    frames = []
    for index in range(count):
        frame = np.zeros((SIZE[1], SIZE[0], 4), dtype=np.uint8)
        frame[..., :3] = (30, 160, 90)
        frame[..., 3] = 255
        frame[10:26, 4 + 4 * index : 20 + 4 * index, :3] = (220, 40, 40)
        frames.append(frame)
    return frames


def gif_bytes(loop: int | None = 0, durations: Sequence[int] = DURATIONS) -> bytes:
    images = [Image.fromarray(frame[..., :3]) for frame in frames_rgba(len(durations))]
    buffer = io.BytesIO()
    extra = {} if loop is None else {"loop": loop}
    images[0].save(
        buffer, "GIF", save_all=True, append_images=images[1:], duration=list(durations), **extra
    )
    return buffer.getvalue()


def read_frames(data: bytes) -> tuple[list[npt.NDArray[np.uint8]], list[int], int, str]:
    with Image.open(io.BytesIO(data)) as image:
        frames, durations = [], []
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGBA")).copy())
            durations.append(int(frame.info["duration"]))
        return frames, durations, int(image.info.get("loop", 1)), str(image.format)


class CountingBatches:
    """The engine's batch step, recording each batch's size."""

    def __init__(self, engine: MattingEngine) -> None:
        self.engine = engine
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def run(self, stacked: StackedBatch) -> list[torch.Tensor]:
        with self._lock:
            self.sizes.append(stacked.count)
        return self.engine.run_batch(stacked)


@pytest.fixture(scope="module")
def engine() -> MattingEngine:
    return MattingEngine(load_model("random:tiny"), device="cpu", resolution=RESOLUTION)


@pytest.fixture
def counting(
    engine: MattingEngine,
) -> Iterator[tuple[InferenceBatcher[StackedBatch], CountingBatches]]:
    counter = CountingBatches(engine)
    batcher = InferenceBatcher(engine.stack_batch, counter.run, max_batch_size=4, max_wait_s=0.05)
    batcher.start()
    yield batcher, counter
    batcher.stop()


def test_an_animated_gif_becomes_an_apng_with_its_timing_and_colours(
    engine: MattingEngine, counting: tuple[InferenceBatcher[StackedBatch], CountingBatches]
) -> None:
    batcher, counter = counting

    result = matte_input(engine, batcher, CpuSlots(2), gif_bytes(loop=0), params())

    frames, durations, loop, container = read_frames(result.data)
    assert (container, result.content_type, result.extension) == ("PNG", "image/png", "png")
    assert (result.frames, len(frames), durations, loop) == (6, 6, DURATIONS, 0)
    for written, source in zip(frames, frames_rgba(), strict=True):
        assert written.shape == source.shape
        visible = written[..., 3] > 0
        # The original colours under the new alpha, frame by frame.
        assert np.array_equal(written[..., :3][visible], source[..., :3][visible])
    # The frames were batched together: fewer model calls than frames.
    assert sum(counter.sizes) == 6
    assert max(counter.sizes) > 1


@pytest.mark.parametrize("container", ["apng", "webp"])
def test_apng_and_animated_webp_inputs_keep_their_frames_and_timing(
    engine: MattingEngine,
    counting: tuple[InferenceBatcher[StackedBatch], CountingBatches],
    container: str,
) -> None:
    encode = encode_apng if container == "apng" else encode_animated_webp
    data = encode(frames_rgba(), DURATIONS, 2)

    result = matte_input(engine, counting[0], CpuSlots(1), data, params())

    frames, durations, loop, _ = read_frames(result.data)
    assert (len(frames), durations, loop) == (6, DURATIONS, 2)
    for written, source in zip(frames, frames_rgba(), strict=True):
        visible = written[..., 3] > 0
        assert np.array_equal(written[..., :3][visible], source[..., :3][visible])


def test_webp_gives_an_animated_webp(
    engine: MattingEngine, counting: tuple[InferenceBatcher[StackedBatch], CountingBatches]
) -> None:
    result = matte_input(engine, counting[0], CpuSlots(1), gif_bytes(loop=2), params(format="webp"))

    frames, durations, loop, container = read_frames(result.data)
    assert (container, result.content_type) == ("WEBP", "image/webp")
    # A GIF that loops twice more plays three times in all.
    assert (len(frames), durations, loop) == (6, DURATIONS, 3)


def test_a_still_gif_stays_a_still_png(
    engine: MattingEngine, counting: tuple[InferenceBatcher[StackedBatch], CountingBatches]
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(frames_rgba(1)[0][..., :3]).save(buffer, "GIF")

    result = matte_input(engine, counting[0], CpuSlots(1), buffer.getvalue(), params())

    with Image.open(io.BytesIO(result.data)) as image:
        assert (image.format, getattr(image, "n_frames", 1), image.size) == ("PNG", 1, SIZE)
        assert "default_image" not in image.info


def still_animation(count: int = 4) -> Animation:
    """Frames that do not change: any change of alpha between them is flicker."""
    frame = frames_rgba(1)[0]
    return Animation(
        frames=[frame.copy() for _ in range(count)], durations_ms=[100] * count, loop=0
    )


def noisy_alphas(count: int, seed: int = 0) -> list[npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE[1], SIZE[0]), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("smoothing", [True, False])
def test_temporal_smoothing_steadies_the_alpha_of_what_does_not_move(
    engine: MattingEngine, smoothing: bool
) -> None:
    result = engine.finish_animation(
        still_animation(), noisy_alphas(4), params(temporal_smoothing=smoothing), {}
    )

    alphas = [frame[..., 3].astype(int) for frame in read_frames(result.data)[0]]
    changes = [np.abs(after - before).max() for before, after in pairwise(alphas)]
    if smoothing:
        assert changes == [0, 0, 0]
    else:
        assert min(changes) > 0


def test_finishing_applies_the_same_geometry_to_every_frame(engine: MattingEngine) -> None:
    alphas = [np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8) for _ in range(3)]
    for index, alpha in enumerate(alphas):
        alpha[10:20, 5 + index * 5 : 15 + index * 5] = 255  # the subject moves right

    result = engine.finish_animation(
        still_animation(3), alphas, params(trim=True, margin=2, temporal_smoothing=False), {}
    )

    frames = read_frames(result.data)[0]
    # The union of the subject's boxes (x 5..25, y 10..20) plus the margin, on every frame.
    assert {frame.shape[:2] for frame in frames} == {(10 + 4, 20 + 4)}
    assert (result.width, result.height) == (24, 14)


def test_the_telegram_preset_writes_an_animation_as_a_webm_video(engine: MattingEngine) -> None:
    result = engine.finish_animation(
        still_animation(6), noisy_alphas(6), params(preset="telegram"), {}
    )

    assert (result.content_type, result.extension) == ("video/webm", "webm")
    assert max(result.width, result.height) == 512
    with av.open(io.BytesIO(result.data)) as container:
        assert len(container.streams.audio) == 0
        assert container.streams.video[0].codec_context.name == "vp9"


def test_a_mask_of_an_animation_is_an_animation_of_masks(
    engine: MattingEngine, counting: tuple[InferenceBatcher[StackedBatch], CountingBatches]
) -> None:
    result = matte_input(engine, counting[0], CpuSlots(1), gif_bytes(), params(mask_only=True))

    frames = read_frames(result.data)[0]
    assert len(frames) == 6
    for frame in frames:
        assert (frame[..., 3] == 255).all()
        assert (frame[..., 0] == frame[..., 1]).all()
        assert (frame[..., 1] == frame[..., 2]).all()


# --- Through the queue's processor --------------------------------------------------------------


@pytest.fixture
def ctx(
    settings: Settings,
    jobstore: InMemoryJobStore,
    sender: Sender,
    engine: MattingEngine,
    counting: tuple[InferenceBatcher[StackedBatch], CountingBatches],
) -> WorkerContext:
    return WorkerContext(
        settings=settings,
        store=jobstore,
        objects=LocalStore([settings.home]),
        uris=UriPolicy.from_settings(settings),
        engine=engine,
        batcher=counting[0],
        cpu=CpuSlots(2),
        memory=MemoryBudget(1 << 30),
        leases=LeaseKeeper(jobstore, lease_s=settings.lease_s, job_timeout_s=900),
        sender=sender,
        worker_name="w1",
    )


def gif_job(ctx: WorkerContext, gif: bytes | None = None, **changes: Any) -> Job:
    """A job whose input is an animated GIF (by default `gif_bytes()`), in TOONQ_HOME, as the
    client creates it."""
    source = ctx.settings.home / "in" / f"{uuid.uuid4().hex}.gif"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(gif or gif_bytes())
    job, _ = ctx.store.create(
        JobSpec(
            input_uri=source.as_uri(),
            output_uri=f"{ctx.settings.output_prefix}/{source.stem}.png",
            params=params(**changes),
            max_attempts=3,
        ),
        actor="test",
    )
    return job


def test_an_animated_job_publishes_an_apng_and_records_it(ctx: WorkerContext) -> None:
    job = gif_job(ctx)

    assert process_job(ctx, job.id) is Outcome.SUCCEEDED

    done = ctx.store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert (done.image_width, done.image_height) == SIZE
    assert done.output == {"content_type": "image/png", "frames": 6, "changes": []}
    frames, durations, _, container = read_frames(
        Path(done.output_uri.removeprefix("file://")).read_bytes()
    )
    assert (container, len(frames), durations) == ("PNG", 6, DURATIONS)


def test_too_many_frames_fails_the_job_at_once_with_its_code(ctx: WorkerContext) -> None:
    job = gif_job(ctx)
    limited = MattingEngine(
        load_model("random:tiny"), device="cpu", resolution=RESOLUTION, max_frames=5
    )

    assert process_job(replace(ctx, engine=limited), job.id) is Outcome.FAILED

    failed = ctx.store.get(job.id)
    assert (failed.error_code, failed.attempts) == ("too_many_frames", 1)
    assert "6 frames" in (failed.error_message or "")


def test_an_animation_a_preset_cannot_fit_fails_at_once_naming_the_limit(
    ctx: WorkerContext,
) -> None:
    job = gif_job(ctx, gif_bytes(durations=[800] * 6), preset="line")

    assert process_job(ctx, job.id) is Outcome.FAILED

    failed = ctx.store.get(job.id)
    assert (failed.error_code, failed.attempts) == ("cannot_fit_preset", 1)
    assert "4 s" in (failed.error_message or "")
    assert not Path(failed.output_uri.removeprefix("file://")).exists()


# --- toonq matte ---------------------------------------------------------------------------------


def matte_cli(tmp_path: Path, source: Path, *args: str) -> Path:
    out = tmp_path / "out"
    model = ["--model", "random:tiny", "--resolution", str(RESOLUTION), "--device", "cpu"]
    result = CliRunner().invoke(cli, ["matte", str(source), "--out", str(out), *model, *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    ("args", "written", "container"),
    [([], "anim.png", "PNG"), (["--format", "webp"], "anim.webp", "WEBP")],
)
def test_toonq_matte_writes_an_animated_gif_as_an_animation(
    tmp_path: Path, args: Sequence[str], written: str, container: str
) -> None:
    source = tmp_path / "anim.gif"
    source.write_bytes(gif_bytes())

    out = matte_cli(tmp_path, source, *args)

    assert sorted(path.name for path in out.iterdir()) == [written]
    frames, durations, loop, kind = read_frames((out / written).read_bytes())
    assert (kind, len(frames), durations, loop) == (container, 6, DURATIONS, 0)


def test_toonq_matte_with_the_telegram_preset_writes_a_webm(tmp_path: Path) -> None:
    source = tmp_path / "anim.gif"
    source.write_bytes(gif_bytes())

    out = matte_cli(tmp_path, source, "--preset", "telegram", "--outline", "2", "--trim")

    assert sorted(path.name for path in out.iterdir()) == ["anim.webm"]
