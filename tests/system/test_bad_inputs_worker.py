"""Odd and hostile inputs through a real worker process: each bad file fails its own job with its
typed code, and the worker goes on (`tests/unit/test_bad_inputs.py` covers the decoder and the
engine).

The inputs and their expected outcomes are in `tests/image_corpus.py`.
"""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from tests.cluster import Cluster
from tests.conftest import StartCluster
from tests.image_corpus import Decoded, corpus_item
from tests.support import png_bytes
from toonq.shared.job import JobStatus

WAIT_S = 120


# --- A real worker --------------------------------------------------------------------------------

MAX_INPUT_BYTES = 1 << 20


WORKER = "bad-inputs-worker"


def submit(service: Cluster, name: str, data: bytes) -> uuid.UUID:
    uri = service.put_input(
        f"{uuid.uuid4().hex[:8]}-{name}", data, content_type="application/octet-stream"
    )
    return service.client.submit(uri).id


@pytest.fixture(scope="module")
def service(start_cluster: StartCluster) -> Cluster:
    """One worker, `WORKER`, that takes two attempts and inputs of `MAX_INPUT_BYTES` at most."""
    return start_cluster(
        WORKER,
        TOONQ_RESOLUTION="64",
        TOONQ_MAX_ATTEMPTS="2",
        TOONQ_MAX_INPUT_BYTES=str(MAX_INPUT_BYTES),
        TOONQ_SWEEP_INTERVAL_S="0",
    )


WORKER_FAILURES = {
    "empty.png": "invalid_image",
    "page.png": "unsupported_format",
    "truncated.jpg": "invalid_image",
    "float-strip-offset.tif": "invalid_image",
    "bomb-100000x100000.png": "image_too_large",
    "scans-200.jpg": "invalid_image",
}
WORKER_SUCCESSES = [
    "exif-rotated.jpg",
    "malformed-exif.png",
    "animated.gif",
    "sixteen-bit-rgb.png",
    "cmyk.jpg",
    "progressive.jpg",
]


def test_a_worker_fails_bad_files_with_their_code_and_goes_on(service: Cluster) -> None:
    jobs = {name: submit(service, name, corpus_item(name).data) for name in WORKER_FAILURES}
    jobs |= {name: submit(service, name, corpus_item(name).data) for name in WORKER_SUCCESSES}
    # A valid image behind more bytes than TOONQ_MAX_INPUT_BYTES.
    oversize = png_bytes() + bytes(MAX_INPUT_BYTES)
    jobs["oversize.png"] = submit(service, "oversize.png", oversize)

    done = {name: service.client.wait(job_id, timeout=WAIT_S) for name, job_id in jobs.items()}

    outcomes = {name: (job.status, job.error_code, job.attempts) for name, job in done.items()}
    expected_failures = WORKER_FAILURES | {"oversize.png": "image_too_large"}
    for name, code in expected_failures.items():
        assert outcomes[name] == (JobStatus.FAILED, code, 1), name
    for name in WORKER_SUCCESSES:
        assert outcomes[name] == (JobStatus.SUCCEEDED, None, 1), name
        expected = corpus_item(name).expected
        assert isinstance(expected, Decoded)
        job = done[name]
        assert (job.image_width, job.image_height) == expected.size  # upright, for EXIF
        output = service.client.objects.get(job.output_uri, max_bytes=1 << 24)
        assert Image.open(io.BytesIO(output)).size == expected.size

    # The worker is still alive and still working.
    assert service.worker(WORKER).running
    after = service.client.wait(submit(service, "after.png", png_bytes()), timeout=WAIT_S)
    assert after.status == JobStatus.SUCCEEDED
    assert service.worker(WORKER).running
