"""Queue overhead: jobs/s through Celery, Redis and PostgreSQL when the job itself costs nothing.

A no-op model (`standin:0`) on 32x32 inputs read from and written to local files: what is left
is the producer's insert and send, the message, the claim, the lease, the outcome and the
acknowledgement, i.e. the per-job price of the queue's guarantees.
"""

from __future__ import annotations

import io

from PIL import Image

from toonq.worker.bench.report import BenchOptions, Section, markdown_table
from toonq.worker.bench.services import WORKER_START_TIMEOUT_S, bench_deployment
from toonq.worker.bench.throughput import measure_throughput

_SIZE = 32


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (_SIZE, _SIZE), (200, 120, 60, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def run(options: BenchOptions) -> Section:
    jobs = 60 if options.quick else 400
    rows = []
    with bench_deployment(use_s3=False) as deployment:
        uri = deployment.put_input("tiny.png", _tiny_png())
        for concurrency in (1, 18):
            job_ids = deployment.submit([uri] * jobs, resolution=_SIZE)
            with deployment.start_worker(
                TOONQ_MODEL="standin:0",
                TOONQ_RESOLUTION=str(_SIZE),
                TOONQ_MAX_BATCH_SIZE="8",
                TOONQ_MAX_BATCH_WAIT_MS="1",
                TOONQ_CONCURRENCY=str(concurrency),
            ) as worker:
                worker.wait_ready(timeout_s=WORKER_START_TIMEOUT_S)
                result = measure_throughput(
                    deployment, job_ids, timeout_s=300, fill=concurrency, drain=concurrency
                )
            per_job_ms = 1000 / result.jobs_per_s if result.jobs_per_s else None
            rows.append(
                {
                    "jobs_in_flight": concurrency,
                    "jobs": result.jobs,
                    "succeeded": result.succeeded,
                    "jobs_per_s": round(result.jobs_per_s, 1),
                    "ms_per_job": round(per_job_ms, 2) if per_job_ms else None,
                    "median_stage_ms": result.median_stage_ms,
                }
            )
    table = markdown_table(
        ["jobs in flight", "jobs", "succeeded", "jobs/s", "ms per job"],
        [
            [r["jobs_in_flight"], r["jobs"], r["succeeded"], r["jobs_per_s"], r["ms_per_job"]]
            for r in rows
        ],
    )
    return Section(
        name="queue",
        title="Queue overhead (Celery + Redis + PostgreSQL, no-op model)",
        data={"runs": rows},
        markdown=table,
        summary=", ".join(
            f"{r['jobs_in_flight']} in flight: {r['jobs_per_s']} jobs/s" for r in rows
        ),
    )
