"""A real `toonq worker` under a real cgroup memory limit, fed a burst of large images at once:
its memory budget, derived from that limit, makes them wait their turn, so none is OOM-killed
and none loses an attempt. Skipped where no cgroup memory limit can be set (not root, or no
writable memory controller)."""

from __future__ import annotations

import io
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import running_cluster
from tests.conftest import REDIS_E2E_URL
from toonq.shared.job import JobStatus
from toonq.worker.harness.postgres import PostgresServer
from toonq.worker.memory import MIB

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The worker's cgroup limit: its interpreter, torch and model take about 500 MiB here (and the
#: libraries' files 600 MiB of page cache, which the kernel may drop), and
#: the burst below would take about 2 GiB more if every job held its images at once.
LIMIT_MIB = 1280
#: 4000x4000, 16 Mpx: about 245 MiB at a job's peak on a CPU worker (16 bytes a pixel).
SIDE = 4000
#: Jobs sent at once, and as many job threads and CPU slots: without a budget they would all
#: decode and prepare together.
BURST = 8
#: Under pytest's timeout, so that a stuck run fails with the worker's threads.
WAIT_S = 240


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A new memory cgroup limited to `limit_bytes` (v2 if its memory controller is enabled,
    else v1); its `cgroup.procs` takes the processes to limit. Removed on exit, once empty."""
    name = f"toonq-test-{uuid.uuid4().hex[:8]}"
    v2 = CGROUP_ROOT / "cgroup.subtree_control"
    if v2.is_file() and "memory" in v2.read_text().split():
        group, limit_file = CGROUP_ROOT / name, "memory.max"
    elif (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").is_file():
        group, limit_file = CGROUP_ROOT / "memory" / name, "memory.limit_in_bytes"
    else:
        pytest.skip("no cgroup memory controller under /sys/fs/cgroup")
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit_bytes))
    except OSError as exc:
        pytest.skip(f"cannot create a memory-limited cgroup ({exc}): run as root to test this")
    try:
        yield group
    finally:
        group.rmdir()


def large_png(seed: int) -> bytes:
    """A SIDE×SIDE opaque picture that compresses well (a fast upload), of full size once
    decoded."""
    ramp = np.arange(SIDE, dtype=np.uint16)
    pixels = np.empty((SIDE, SIDE, 3), dtype=np.uint8)
    pixels[..., 0] = ((ramp[None, :] + seed * 16) % 256).astype(np.uint8)
    pixels[..., 1] = (ramp[:, None] % 256).astype(np.uint8)
    pixels[..., 2] = seed * 20
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} is not exported")


def test_a_burst_of_large_images_under_a_memory_limit_kills_nothing_and_costs_no_attempt(
    pg_server: PostgresServer, s3_server: str, tmp_path: Path
) -> None:
    with (
        memory_cgroup(LIMIT_MIB * MIB) as group,
        running_cluster(
            postgres_admin_url=pg_server.admin_url,
            broker_url=REDIS_E2E_URL,
            s3_endpoint=s3_server,
            log_dir=tmp_path,
            env={
                "TOONQ_CONCURRENCY": str(BURST),
                "TOONQ_CPU_WORKERS": str(BURST),
                # The inputs in flight that the default budget sets aside: 8 × 8 MiB.
                "TOONQ_MAX_INPUT_BYTES": str(8 * MIB),
                "TOONQ_SWEEP_INTERVAL_S": "0",
            },
        ) as cluster,
    ):
        worker = cluster.start_worker("limited")
        # At once, before it imports anything: all it allocates from now on counts.
        (group / "cgroup.procs").write_text(str(worker.process.pid))
        worker.wait_ready(timeout_s=300)
        budget = metric(worker.port, "toonq_memory_budget_bytes")
        assert 0 < budget < LIMIT_MIB * MIB

        uris = [cluster.put_input(f"large-{n}.png", large_png(n)) for n in range(BURST)]
        job_ids = cluster.submit(uris)
        cluster.wait_until_final(timeout_s=WAIT_S)

        worker.check_running()  # not OOM-killed
        records = cluster.records()
        assert [
            (records[job].status, records[job].attempts, records[job].error_code) for job in job_ids
        ] == [(JobStatus.SUCCEEDED, 1, None)] * BURST
        assert metric(worker.port, "toonq_memory_reserved_bytes") == 0
