"""Pipeline efficiency: what the worker around the model loses, end to end.

Jobs go through the real system (producer -> PostgreSQL -> Redis -> `toonq worker` -> S3) with
a stand-in model whose cost is a fixed wait per batch (`standin:MS`), which releases the GIL as a
host thread waiting on a GPU does. Its own limit is `max batch / wait`; the efficiency is the
measured jobs/s divided by that limit. 1.0 means the GPU would never wait for the CPU side.

The wait is calibrated in the same run. First the CPU side alone is measured: the same worker with
a model that costs nothing (`standin:0`) gives the jobs/s this machine's CPU sustains for that
image size (decode, composite, resize, postprocess, encode, S3, queue). The stand-in's limit is
then set to `MODEL_SHARE` of that: a GPU the CPU side can keep up with, so that whatever the
worker falls short of the limit is lost by the pipeline itself (stalls, batches that do not fill,
work that does not overlap), not by a saturated CPU. A worker that handles one job at a time
(the serial row) is measured against the same limit.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from toonq.worker.bench.report import PIPELINE_EFFICIENCY, BenchOptions, Section, markdown_table
from toonq.worker.bench.services import bench_deployment
from toonq.worker.bench.throughput import Throughput, run_worker
from toonq.worker.harness.deployment import Deployment
from toonq.worker.pipeline import default_concurrency
from toonq.worker.samples import anime_sample

#: Image sizes by megapixels (the report's keys): 1024x1024 and 2048x2048.
SIZES = {"1": (1024, 1024), "4": (2048, 2048)}
MAX_BATCH = 8
PIPELINED_CONCURRENCY = default_concurrency(MAX_BATCH)
#: The stand-in's limit as a share of what the CPU side sustains alone.
MODEL_SHARE = 0.8
#: Distinct input objects per size; jobs cycle through them.
_INPUTS = 4


@dataclass(frozen=True)
class PipelineRun:
    megapixels: str
    mode: str  # "pipelined" or "serial"
    #: Jobs/s of the CPU side alone (no-cost model, pipelined), which the limit derives from.
    cpu_side_jobs_per_s: float
    concurrency: int
    max_batch_size: int
    standin_ms_per_batch: float
    limit_jobs_per_s: float
    throughput: Throughput

    @property
    def efficiency(self) -> float:
        return self.throughput.jobs_per_s / self.limit_jobs_per_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"efficiency": round(self.efficiency, 3)}


def sample_png(size: tuple[int, int]) -> bytes:
    """An anime-style cut-out of `size` (width, height) as a PNG, as a sticker backend sends."""
    buffer = io.BytesIO()
    anime_sample(seed=11, size=size, transparent=True).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _throughput(
    deployment: Deployment, uris: Sequence[str], count: int, *, model: str, batch: int, jobs: int
) -> Throughput:
    return run_worker(
        deployment,
        deployment.submit([uris[i % len(uris)] for i in range(count)]),
        timeout_s=900,
        fill=batch,
        drain=jobs,
        TOONQ_MODEL=model,
        TOONQ_MAX_BATCH_SIZE=str(batch),
        TOONQ_CONCURRENCY=str(jobs),
    ).throughput


def measure(
    megapixels: str, *, jobs: int, serial_jobs: int, deployment: Deployment
) -> list[PipelineRun]:
    png = sample_png(SIZES[megapixels])
    uris = [deployment.put_input(f"{megapixels}mp-{i}.png", png) for i in range(_INPUTS)]
    cpu_side = _throughput(
        deployment, uris, jobs, model="standin:0", batch=MAX_BATCH, jobs=PIPELINED_CONCURRENCY
    ).jobs_per_s
    limit = MODEL_SHARE * cpu_side
    runs = []
    for mode, count, batch, concurrency in (
        ("pipelined", jobs, MAX_BATCH, PIPELINED_CONCURRENCY),
        ("serial", serial_jobs, 1, 1),
    ):
        wait_ms = round(1000 * batch / limit, 1)
        throughput = _throughput(
            deployment, uris, count, model=f"standin:{wait_ms}", batch=batch, jobs=concurrency
        )
        runs.append(
            PipelineRun(
                megapixels=megapixels,
                mode=mode,
                cpu_side_jobs_per_s=round(cpu_side, 3),
                concurrency=concurrency,
                max_batch_size=batch,
                standin_ms_per_batch=wait_ms,
                limit_jobs_per_s=round(limit, 3),
                throughput=throughput,
            )
        )
    return runs


def run(options: BenchOptions) -> Section:
    """Both sizes, pipelined and serial; `pipeline_efficiency` holds the pipelined ratios."""
    runs: list[PipelineRun] = []
    with bench_deployment() as deployment:
        for megapixels in SIZES:
            # Enough jobs that the steady state (after the first batch, before the last
            # jobs in flight) spans many batches.
            jobs = 64 if options.quick else 240 // (1 if megapixels == "1" else 2)
            runs += measure(megapixels, jobs=jobs, serial_jobs=jobs // 4, deployment=deployment)
    efficiency = {
        run.megapixels: round(run.efficiency, 3) for run in runs if run.mode == "pipelined"
    }
    table = markdown_table(
        [
            "MP",
            "CPU side alone, jobs/s",
            "mode",
            "jobs in flight",
            "batch",
            "stand-in ms/batch",
            "limit jobs/s",
            "jobs/s",
            "efficiency",
            "succeeded",
        ],
        [
            [
                run.megapixels,
                run.cpu_side_jobs_per_s,
                run.mode,
                run.concurrency,
                run.max_batch_size,
                run.standin_ms_per_batch,
                run.limit_jobs_per_s,
                round(run.throughput.jobs_per_s, 3),
                round(run.efficiency, 3),
                f"{run.throughput.succeeded}/{run.throughput.jobs}",
            ]
            for run in runs
        ],
    )
    return Section(
        name="pipeline",
        title="Pipeline efficiency (real worker, stand-in model)",
        data={PIPELINE_EFFICIENCY: efficiency, "runs": [run.to_dict() for run in runs]},
        markdown=table + "\n\n" + _NOTE,
        summary=", ".join(f"{mp} MP: {ratio}" for mp, ratio in efficiency.items()),
    )


_NOTE = (
    "First the CPU side alone: the same worker with a model that costs nothing gives the jobs/s "
    "this machine sustains for the image size (decode, composite, resize, postprocess, encode, "
    f"S3, queue). The stand-in model's limit is set to {MODEL_SHARE:.0%} of that, a GPU the CPU "
    "can keep up with; efficiency = measured jobs/s / that limit, in the steady state (the slope "
    "of completions over time once the first batch is out and until the queue runs dry). "
    "The serial row (one job at a time, batch 1) is measured against the same limit."
)
