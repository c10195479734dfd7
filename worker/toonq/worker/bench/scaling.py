"""How the worker's CPU side scales with cores, and what one GPU's worker could reach.

The CPU side alone: the real worker with a model that costs nothing (`standin:0`) on 1 MP PNG
inputs read from and written to local files, pinned to one core, then to two in one process,
then to two in two job processes beside the model process (`TOONQ_JOB_PROCESSES`), alternated
so that the machine's load weighs on all alike. Its CPU time per job, pinned to one
core, is set against the unavoidable codec work: the same PNG decoded and its pixels encoded
again with imagecodecs at level 1.

The projection. Work that releases the GIL (codecs, PyTorch, sockets) spreads over cores; the
Python that holds it does not. The worker's CPU time per job on the no-op path with 32x32 inputs
is nearly all Python: an upper bound of the GIL-held time per job at any image size. One worker
process on N cores then reaches at most min(N x 1000 / CPU ms per job, 1000 / GIL ms per job)
jobs/s, whatever its GPU does.

A machine's cores do not always add up (shared or throttled virtual CPUs): the section also
measures what two processes of pure C work (SHA-256) get done against one, in the same run, the
ceiling any two-core speedup is read against.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Final

import imagecodecs

from toonq.worker.bench.images import solid_png
from toonq.worker.bench.pipeline import sample_png
from toonq.worker.bench.queue_overhead import SIZE
from toonq.worker.bench.report import BenchOptions, Section, markdown_table, percent
from toonq.worker.bench.services import bench_deployment
from toonq.worker.bench.throughput import run_worker
from toonq.worker.bench.timing import time_interleaved
from toonq.worker.harness.deployment import Deployment
from toonq.worker.pipeline import default_concurrency

#: Host sizes the projection is given for.
PROJECTED_CORES: Final = (1, 2, 4, 8, 16, 32)
#: Jobs in flight in a CPU worker by default (batches of one).
_IN_FLIGHT: Final = default_concurrency(1)
_MEGAPIXEL = (1024, 1024)


def run(options: BenchOptions) -> Section:
    jobs, noop_jobs, rounds = (24, 60, 1) if options.quick else (120, 400, 2)
    png = sample_png(_MEGAPIXEL)
    (floor_ms,) = time_interleaved([lambda: _codec_floor(png)], repeat=5, clock=time.process_time)
    cpus = sorted(os.sched_getaffinity(0))
    # (CPUs, job processes): one core, two cores in one process, two cores in two job processes.
    pinnings = [(cpus[:1], 1), (cpus[:2], 1), (cpus[:2], 2)] if len(cpus) > 1 else [(cpus[:1], 1)]
    machine_speedup = _machine_two_core_speedup() if len(cpus) > 1 else None
    with bench_deployment(use_s3=False) as deployment:
        uri = deployment.put_input("1mp.png", png)
        runs = [
            _run(deployment, uri, jobs, cpus=pinned, resolution=1024, processes=processes)
            for _ in range(rounds)
            for pinned, processes in pinnings
        ]
        tiny_uri = deployment.put_input("tiny.png", solid_png(SIZE))
        noop = _run(deployment, tiny_uri, noop_jobs, cpus=cpus[:1], resolution=SIZE, processes=1)
    one = [r for r in runs if r["cores"] == 1]
    speedup = _median_speedup(one, [r for r in runs if (r["cores"], r["job_processes"]) == (2, 1)])
    split_speedup = _median_speedup(
        one, [r for r in runs if (r["cores"], r["job_processes"]) == (2, 2)]
    )
    cpu_ms = statistics.median(r["cpu_ms_per_job"] for r in one)
    gil_ms = noop["cpu_ms_per_job"]
    projection = {
        str(cores): round(min(cores * 1000 / cpu_ms, 1000 / gil_ms), 1) for cores in PROJECTED_CORES
    }
    data = {
        "runs": runs,
        # None on a machine with one CPU.
        "two_core_speedup": speedup,
        "two_core_speedup_job_processes": split_speedup,
        "machine_two_core_speedup": machine_speedup,
        "cpu_ms_per_job_1mp": round(cpu_ms, 2),
        "codec_floor_ms_1mp": round(floor_ms, 2),
        "cpu_over_codec_floor": round(cpu_ms / floor_ms, 3),
        "gil_ms_per_job": round(gil_ms, 2),
        "projected_jobs_per_s_1mp": projection,
    }
    return Section(
        name="scaling",
        title="CPU side: scaling with cores, CPU per job, and the projection for one GPU",
        data=data,
        markdown=_markdown(data),
        summary=(
            f"2 cores / 1 core: {data['two_core_speedup']}x, in job processes "
            f"{data['two_core_speedup_job_processes']}x (the machine's own: "
            f"{data['machine_two_core_speedup']}x); 1 MP job "
            f"{data['cpu_over_codec_floor']}x the codec floor; GIL {gil_ms} ms per job; "
            f"projected on 16 cores: {projection['16']} jobs/s"
        ),
    )


def _median_speedup(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> float | None:
    """The median, over the rounds, of a two-core run's jobs/s over the one-core run's."""
    speedups = [b["jobs_per_s"] / a["jobs_per_s"] for a, b in zip(one, two, strict=False)]
    return round(statistics.median(speedups), 3) if speedups else None


def _run(
    deployment: Deployment,
    uri: str,
    jobs: int,
    *,
    cpus: Collection[int],
    resolution: int,
    processes: int,
) -> dict[str, Any]:
    run = run_worker(
        deployment,
        deployment.submit([uri] * jobs, resolution=resolution),
        cpus=cpus,
        timeout_s=900,
        fill=_IN_FLIGHT,
        drain=_IN_FLIGHT,
        TOONQ_MODEL="standin:0",
        TOONQ_RESOLUTION=str(resolution),
        TOONQ_JOB_PROCESSES=str(processes),
    )
    return {
        "cores": len(cpus),
        "job_processes": processes,
        "image": f"{resolution}x{resolution}" if resolution == SIZE else "1 MP",
        "jobs": run.throughput.jobs,
        "succeeded": run.throughput.succeeded,
        "jobs_per_s": round(run.throughput.jobs_per_s, 2),
        "cpu_ms_per_job": run.cpu_ms_per_job,
        # The services' work and the kernel's counted too: pinned to one core, the worker
        # leaves the other to them.
        "machine_cpu_ms_per_job": run.machine_cpu_ms_per_job,
        "machine_busy": run.machine_busy,
    }


def _machine_two_core_speedup() -> float:
    """Two processes hashing against one hashing twice as much: 2.0 on two free cores."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_hash, [1, 1]))  # both processes started and warm
        start = time.perf_counter()
        pool.submit(_hash, 2).result()
        one = time.perf_counter() - start
        start = time.perf_counter()
        list(pool.map(_hash, [1, 1]))
        two = time.perf_counter() - start
    return round(one / two, 3)


def _hash(rounds: int) -> None:
    data = bytes(64 * 1024 * 1024)
    for _ in range(rounds):
        hashlib.sha256(data).digest()


def _codec_floor(png: bytes) -> bytes:
    return bytes(imagecodecs.png_encode(imagecodecs.png_decode(png), level=1))


def _markdown(data: dict[str, Any]) -> str:
    runs = markdown_table(
        [
            "image",
            "cores",
            "job processes",
            "jobs",
            "succeeded",
            "jobs/s",
            "CPU ms per job",
            "machine CPU ms per job",
            "machine busy",
        ],
        [
            [
                r["image"],
                r["cores"],
                r["job_processes"],
                r["jobs"],
                r["succeeded"],
                r["jobs_per_s"],
                r["cpu_ms_per_job"],
                r["machine_cpu_ms_per_job"],
                percent(r["machine_busy"]),
            ]
            for r in data["runs"]
        ],
    )
    summary = markdown_table(
        ["figure", "value"],
        [
            ["2 cores over 1 core (1 MP, median of rounds)", data["two_core_speedup"]],
            [
                "the same, in two job processes beside the model process",
                data["two_core_speedup_job_processes"],
            ],
            ["the machine's own: 2 processes of SHA-256 over 1", data["machine_two_core_speedup"]],
            ["CPU ms per 1 MP job, one core", data["cpu_ms_per_job_1mp"]],
            [
                "codec floor ms (PNG decode + encode, imagecodecs level 1)",
                data["codec_floor_ms_1mp"],
            ],
            ["CPU per job / codec floor", data["cpu_over_codec_floor"]],
            ["GIL-held ms per job (upper bound: no-op path, one core)", data["gil_ms_per_job"]],
        ],
    )
    projection = markdown_table(
        ["cores", "projected jobs/s at 1 MP, one worker process"],
        list(data["projected_jobs_per_s_1mp"].items()),
    )
    return f"{runs}\n\n{summary}\n\n{projection}"
