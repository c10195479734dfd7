"""Animated inputs: what the worker sustains on them, and what each container costs per frame.

End to end: a 24-frame 512x512 animation (128x128 with --quick; an anime character swaying over
its background) as a GIF and as an APNG, through the real system (producer -> PostgreSQL ->
Redis -> `toonq worker` -> S3), which mattes every frame through its GPU loop and writes an
APNG. The model is the stand-in (`standin:MS`): first one that costs nothing, so that the CPU
side sets the pace, then (not with --quick) one that waits as long per batch as an H100 takes
for ToonOut. The yardstick, on the same worker: the same 24 frames as single PNG jobs, as many
frames in all. Frames/s of an animation over images/s of the stills is what the animated path
costs beyond its frames. The rates are over the whole run, from the first claim to the last
completion: a worker holds every animation of a run at once, so that their completions bunch at
the end (no steady state).

Per frame: the CPU milliseconds of decoding each input container (GIF, APNG, animated WebP) and
of encoding each output container (APNG, lossless animated WebP, VP9 WebM with alpha) for the
same animation, in CPU time, timed in turns after a warm-up.
"""

from __future__ import annotations

import io
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from itertools import cycle, islice
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from toonq.worker.bench.images import moving_cutouts
from toonq.worker.bench.pipeline import MAX_BATCH, PIPELINED_CONCURRENCY
from toonq.worker.bench.report import BenchOptions, Section, markdown_table
from toonq.worker.bench.services import WORKER_START_TIMEOUT_S, bench_deployment
from toonq.worker.bench.throughput import measure_whole_run
from toonq.worker.bench.timing import time_interleaved
from toonq.worker.engine.animated_encode import (
    encode_animated_webp,
    encode_apng,
    encode_webm,
)
from toonq.worker.engine.animation import decode_animation
from toonq.worker.harness.deployment import Deployment

FRAMES: Final = 24
#: The frames' side, or a small one for --quick.
SIDE: Final = 512
QUICK_SIDE: Final = 128
FRAME_MS: Final = 80
#: Plays of the animation: for ever.
LOOP: Final = 0
#: The stand-in's wait per batch of `MAX_BATCH` like an H100's: ToonOut at 1024² in bf16 runs
#: about 150 images/s at moderate batch sizes (`make gpu-check`).
H100_MS_PER_BATCH: Final = round(1000 * MAX_BATCH / 150)
#: Animated jobs per input container and model; the stills run as many frames.
ANIMATED_JOBS: Final = 8
QUICK_ANIMATED_JOBS: Final = 3
#: How inputs arrive: GIF and APNG as Pillow writes them, animated WebP lossy as stickers are.
_INPUT_OPTIONS: Final[dict[str, dict[str, Any]]] = {
    "gif": {},
    "apng": {},
    "webp": {"quality": 90},
}
_PILLOW_FORMATS: Final = {"gif": "GIF", "apng": "PNG", "webp": "WEBP"}
_CONTENT_TYPES: Final = {"gif": "image/gif", "apng": "image/png"}
#: The end-to-end inputs: the animation in two containers, and its frames as still PNGs.
_END_TO_END_INPUTS: Final = ("gif", "apng")
_STILLS: Final = "png stills"
_NO_PIXEL_LIMIT: Final = 1 << 40
_RUN_TIMEOUT_S: Final = 600.0

Frames = Sequence[npt.NDArray[np.uint8]]


@dataclass(frozen=True)
class WorkerRow:
    #: "gif", "apng" (one animation per job), or "png stills" (one frame per job).
    input: str
    model: str
    jobs: int
    succeeded: int
    frames_per_job: int
    jobs_per_s: float
    frames_per_s: float
    #: frames/s over the stills' images/s on the same worker; 1.0 for the stills.
    relative_to_stills: float
    #: The worker's CPU time (user and system) while it ran the jobs, per frame.
    cpu_ms_per_frame: float
    median_stage_ms: dict[str, float]


@dataclass(frozen=True)
class CodecRow:
    step: str  # "decode" or "encode"
    container: str
    ms_per_frame: float
    #: The encoded animation's size (the input's, for decodes).
    bytes: int


def run(options: BenchOptions) -> Section:
    side = QUICK_SIDE if options.quick else SIDE
    cutouts = moving_cutouts(FRAMES, (side, side))
    opaque = [_opaque(frame) for frame in cutouts]
    inputs = {container: _save_animation(opaque, container) for container in _INPUT_OPTIONS}
    repeat = 1 if options.quick else options.repeat
    codecs = _decode_rows(inputs, repeat) + _encode_rows(cutouts, repeat)
    animated_jobs = QUICK_ANIMATED_JOBS if options.quick else ANIMATED_JOBS
    models = ["standin:0"] if options.quick else ["standin:0", f"standin:{H100_MS_PER_BATCH}"]
    with bench_deployment() as deployment:
        stills = [
            deployment.put_input(f"frame-{i}.png", _save_png(frame))
            for i, frame in enumerate(opaque)
        ]
        animations = {
            container: deployment.put_input(
                f"animation.{container}", inputs[container], content_type=_CONTENT_TYPES[container]
            )
            for container in _END_TO_END_INPUTS
        }
        workers = [
            row
            for model in models
            for row in _worker_rows(deployment, model, stills, animations, animated_jobs)
        ]
    data: dict[str, Any] = {
        "frames": FRAMES,
        "side": side,
        "frame_ms": FRAME_MS,
        "max_batch_size": MAX_BATCH,
        "jobs_in_flight": PIPELINED_CONCURRENCY,
        "repeat": repeat,
        "worker": [asdict(row) for row in workers],
        "codecs": [asdict(row) for row in codecs],
    }
    return Section(
        name="animation",
        title=f"Animated inputs ({FRAMES} frames of {side}x{side}): worker and codecs",
        data=data,
        markdown=_markdown(workers, codecs, side=side, repeat=repeat),
        summary=", ".join(
            f"{row.input} {row.model}: {row.frames_per_s} frames/s ({row.relative_to_stills}x)"
            for row in workers
            if row.input != _STILLS
        ),
    )


def _worker_rows(
    deployment: Deployment,
    model: str,
    stills: Sequence[str],
    animations: dict[str, str],
    animated_jobs: int,
) -> list[WorkerRow]:
    """One worker with `model`: the stills first (the yardstick), then each animation."""
    cases = [(_STILLS, list(islice(cycle(stills), animated_jobs * FRAMES)), 1)]
    cases += [(name, [uri] * animated_jobs, FRAMES) for name, uri in animations.items()]
    rows: list[WorkerRow] = []
    with deployment.start_worker(
        TOONQ_MODEL=model,
        TOONQ_MAX_BATCH_SIZE=str(MAX_BATCH),
        TOONQ_CONCURRENCY=str(PIPELINED_CONCURRENCY),
    ) as worker:
        worker.wait_ready(timeout_s=WORKER_START_TIMEOUT_S)
        for name, uris, frames_per_job in cases:
            cpu_before = worker.cpu_seconds()
            job_ids = deployment.submit(uris)
            result = measure_whole_run(deployment, job_ids, timeout_s=_RUN_TIMEOUT_S)
            cpu_s = worker.cpu_seconds() - cpu_before
            _check_frames_written(deployment, job_ids[0], frames_per_job)
            frames_per_s = result.jobs_per_s * frames_per_job
            stills_per_s = rows[0].frames_per_s if rows else frames_per_s
            rows.append(
                WorkerRow(
                    input=name,
                    model=model,
                    jobs=result.jobs,
                    succeeded=result.succeeded,
                    frames_per_job=frames_per_job,
                    jobs_per_s=round(result.jobs_per_s, 3),
                    frames_per_s=round(frames_per_s, 2),
                    relative_to_stills=round(frames_per_s / stills_per_s, 3),
                    cpu_ms_per_frame=round(cpu_s * 1000 / (result.jobs * frames_per_job), 2),
                    median_stage_ms=result.median_stage_ms,
                )
            )
    return rows


def _check_frames_written(deployment: Deployment, job_id: uuid.UUID, frames: int) -> None:
    """The job wrote all `frames` of its input: the worker took the path it was meant to
    measure (an animation's, not a still's of its first frame)."""
    job = deployment.client.get(job_id)
    written = None if job.output is None else job.output["frames"]
    if written != frames:
        raise AssertionError(
            f"job {job_id} ({job.status}, {job.error_code}) wrote {written} frames of {frames}"
        )


def _decode_rows(inputs: dict[str, bytes], repeat: int) -> list[CodecRow]:
    decode = partial(
        decode_animation, max_pixels=_NO_PIXEL_LIMIT, max_frames=FRAMES, max_duration_s=math.inf
    )
    for container, data in inputs.items():
        animation = decode(data)
        if animation is None or len(animation.frames) != FRAMES:
            raise AssertionError(f"the {container} input does not decode to {FRAMES} frames")
    cases = {container: partial(decode, data) for container, data in inputs.items()}
    sizes = {container: len(data) for container, data in inputs.items()}
    return _timed("decode", cases, sizes, repeat)


def _encode_rows(cutouts: Frames, repeat: int) -> list[CodecRow]:
    durations = [FRAME_MS] * FRAMES
    cases: dict[str, Callable[[], bytes]] = {
        "apng": partial(encode_apng, cutouts, durations, LOOP),
        "webp lossless": partial(encode_animated_webp, cutouts, durations, LOOP),
        "webm vp9 + alpha": partial(encode_webm, cutouts, durations),
    }
    sizes = {container: len(encode()) for container, encode in cases.items()}
    return _timed("encode", cases, sizes, repeat)


def _timed(
    step: str, cases: Mapping[str, Callable[[], object]], sizes: Mapping[str, int], repeat: int
) -> list[CodecRow]:
    """Each case's median CPU time per frame, timed in turns."""
    medians = time_interleaved(list(cases.values()), repeat=repeat, clock=time.process_time)
    return [
        CodecRow(step, container, round(ms / FRAMES, 3), sizes[container])
        for container, ms in zip(cases, medians, strict=True)
    ]


def _opaque(cutout: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The picture as a backend sends it for matting: the same colours, no alpha yet."""
    pixels = cutout.copy()
    pixels[..., 3] = 255
    return pixels


def _save_animation(frames: Frames, container: str) -> bytes:
    first, *rest = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    first.save(
        buffer,
        format=_PILLOW_FORMATS[container],
        save_all=True,
        append_images=rest,
        duration=FRAME_MS,
        loop=LOOP,
        **_INPUT_OPTIONS[container],
    )
    return buffer.getvalue()


def _save_png(frame: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def _markdown(
    workers: Sequence[WorkerRow], codecs: Sequence[CodecRow], *, side: int, repeat: int
) -> str:
    worker_table = markdown_table(
        [
            "input",
            "model",
            "succeeded",
            "jobs/s",
            "frames/s",
            "vs stills",
            "worker CPU ms/frame",
        ],
        [
            (
                row.input,
                row.model,
                f"{row.succeeded}/{row.jobs}",
                row.jobs_per_s,
                row.frames_per_s,
                row.relative_to_stills,
                row.cpu_ms_per_frame,
            )
            for row in workers
        ],
    )
    codec_table = markdown_table(
        ["step", "container", "CPU ms/frame", "KiB"],
        [(row.step, row.container, row.ms_per_frame, round(row.bytes / 1024)) for row in codecs],
    )
    worker_note = (
        f"The real worker (batches of {MAX_BATCH}, {PIPELINED_CONCURRENCY} jobs in flight, "
        f"output APNG) on a {FRAMES}-frame {side}x{side} animation, and on its frames as single "
        "PNG jobs (as many frames in all). Rates over the whole run, first claim to last "
        "completion; vs stills: frames/s over the stills' images/s. Where it ran, "
        f"`standin:{H100_MS_PER_BATCH}` waits per batch as long as an H100 runs ToonOut "
        "(about 150 images/s)."
    )
    codec_note = (
        f"CPU milliseconds per frame for the whole {FRAMES}-frame animation, median of {repeat} "
        "run(s) after a warm-up, on the calling thread (the VP9 encoder's own threads count "
        "too). Inputs as Pillow writes them (WebP lossy at quality 90); outputs with toonq's "
        "settings (APNG level 1, WebP lossless at quality 0 and method 0, VP9 at crf 30)."
    )
    return f"{worker_note}\n\n{worker_table}\n\n{codec_note}\n\n{codec_table}"
