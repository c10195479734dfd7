"""Pipeline efficiency: what the worker around the model loses, end to end.

Jobs go through the real system (producer -> PostgreSQL -> Redis -> `toonq worker` -> S3) with
a stand-in model whose cost is a fixed wait per batch (`standin:MS`), which releases the GIL as a
host thread waiting on a GPU does. Its own limit is `max batch / wait`; the efficiency is the
measured jobs/s divided by that limit. 1.0 means the GPU would never wait for the CPU side.

The wait is set so that the stand-in processes one image in the time one CPU core takes for the
job's own image work (decode, composite, resize, postprocess, encode): a GPU exactly as fast as
one core of this machine. A worker doing one job at a time then reaches at most about half the
limit; a pipelined one reaches it only if it overlaps all of that work with the model.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from toonq.worker.bench.deployment import Deployment, Throughput
from toonq.worker.bench.report import PIPELINE_EFFICIENCY, BenchOptions, Section, markdown_table
from toonq.worker.engine.matting import MatteOptions, MattingEngine
from toonq.worker.engine.weights import load_model
from toonq.worker.samples import anime_sample

#: Image sizes by megapixels (the report's keys): 1024x1024 and 2048x2048.
SIZES = {"1": (1024, 1024), "4": (2048, 2048)}
MAX_BATCH = 8
#: Distinct input objects per size; jobs cycle through them.
_INPUTS = 4


@dataclass(frozen=True)
class PipelineRun:
    megapixels: str
    mode: str  # "pipelined" or "serial"
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


def sample_png(megapixels: str) -> bytes:
    buffer = io.BytesIO()
    anime_sample(seed=11, size=SIZES[megapixels], transparent=True).save(
        buffer, "PNG", compress_level=1
    )
    return buffer.getvalue()


def image_work_ms(png: bytes, *, repeat: int = 3) -> float:
    """One core's time for a job's image work, without the model: the median of `repeat`."""
    engine = MattingEngine(load_model("standin:0"), device="cpu")
    options = MatteOptions()
    runs = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        engine.matte(png, options)
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs[1:])  # the first run pays one-off allocation costs


def measure(
    megapixels: str, *, jobs: int, serial_jobs: int, deployment: Deployment
) -> list[PipelineRun]:
    png = sample_png(megapixels)
    cost_ms = image_work_ms(png)
    uris = [deployment.put_input(f"{megapixels}mp-{i}.png", png) for i in range(_INPUTS)]
    runs = []
    for mode, count, batch, concurrency in (
        ("pipelined", jobs, MAX_BATCH, 2 * MAX_BATCH + 2),
        ("serial", serial_jobs, 1, 1),
    ):
        wait_ms = round(cost_ms * batch, 1)
        job_ids = deployment.submit([uris[i % _INPUTS] for i in range(count)])
        with deployment.worker(
            TOONQ_MODEL=f"standin:{wait_ms}",
            TOONQ_MAX_BATCH_SIZE=str(batch),
            TOONQ_CONCURRENCY=str(concurrency),
        ):
            throughput = deployment.wait_final(
                job_ids, timeout_s=60 + count * cost_ms / 100, fill=batch, drain=concurrency
            )
        runs.append(
            PipelineRun(
                megapixels=megapixels,
                mode=mode,
                concurrency=concurrency,
                max_batch_size=batch,
                standin_ms_per_batch=wait_ms,
                limit_jobs_per_s=round(1000 / cost_ms, 3),
                throughput=throughput,
            )
        )
    return runs


def run(options: BenchOptions) -> Section:
    """Both sizes, pipelined and serial; `pipeline_efficiency` holds the pipelined ratios."""
    runs: list[PipelineRun] = []
    with Deployment() as deployment:
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
    "The stand-in model waits, per batch, what one CPU core of this machine spends on one job's "
    "image work times the batch size, so its limit is one job per core-time of image work. "
    "Efficiency = measured jobs/s / that limit, in the steady state: the slope of completions "
    "over time once the first batch is out and until the queue runs dry. "
    "The serial row (one job at a time, batch 1) shows what the same model gives without "
    "the pipeline."
)
