"""Animated stickers through the real system: the producer, PostgreSQL, Redis, S3 over HTTP and
a `toonq worker` process. An animated GIF comes out an APNG with its timing, a preset's output
meets its limits and the job records what the output is."""

from __future__ import annotations

import io
import uuid
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image, ImageSequence

from tests.cluster import Cluster
from tests.conftest import StartCluster
from toonq.shared.job import Job, JobStatus

WAIT_S = 180
DURATIONS = [60, 120, 60, 90, 150, 70, 80, 100]
SIZE = (96, 72)


def animated_gif() -> bytes:
    """A disc that moves across a still background, a frame per duration."""
    rows, columns = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
    frames = []
    for index in range(len(DURATIONS)):
        pixels = np.full((SIZE[1], SIZE[0], 3), (40, 150, 200), dtype=np.uint8)
        pixels[np.hypot(columns - 20 - 7 * index, rows - 36) < 14] = (240, 90, 60)
        frames.append(Image.fromarray(pixels))
    buffer = io.BytesIO()
    frames[0].save(
        buffer, "GIF", save_all=True, append_images=frames[1:], duration=DURATIONS, loop=0
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(start_cluster: StartCluster) -> Cluster:
    return start_cluster("animated-worker", TOONQ_RESOLUTION="64", TOONQ_SWEEP_INTERVAL_S="0")


def run(service: Cluster, **params: Any) -> tuple[Job, bytes]:
    uri = service.put_input(
        f"{uuid.uuid4().hex[:8]}-wave.gif", animated_gif(), content_type="image/gif"
    )
    job = service.client.wait(service.client.submit(uri, **params).id, timeout=WAIT_S)
    assert job.status == JobStatus.SUCCEEDED, (job.error_code, job.error_message)
    return job, service.client.objects.get(job.output_uri, max_bytes=1 << 24)


def test_an_animated_gif_comes_out_an_apng_with_its_timing(service: Cluster) -> None:
    job, output = run(service)

    with Image.open(io.BytesIO(output)) as image:
        # The iterator seeks the one image: each frame is read as it comes.
        frames = [(frame.info["duration"], frame.size) for frame in ImageSequence.Iterator(image)]
        assert image.format == "PNG"
        assert image.info["loop"] == 0
    assert frames == [(duration, SIZE) for duration in DURATIONS]
    assert (job.image_width, job.image_height) == SIZE
    assert job.output == {"content_type": "image/png", "frames": 8, "changes": []}


def test_the_telegram_preset_gives_a_webm_that_meets_its_limits(service: Cluster) -> None:
    job, output = run(service, preset="telegram", outline=4)

    assert job.output is not None
    assert job.output["content_type"] == "video/webm"
    assert "scaled 96x72 -> 512x384" in job.output["changes"]
    assert len(output) <= 256_000
    with av.open(io.BytesIO(output), mode="r") as container:
        stream = container.streams.video[0]
        assert len(container.streams.audio) == 0
        assert max(stream.codec_context.width, stream.codec_context.height) == 512
        assert float(container.duration or 0) / av.time_base <= 3.0
