"""End to end: jobs/s through a real `toonq worker` process on the check's model, in the
embedded mode (a SQLite database, a folder broker and a folder object store: no server), and
the ratio to the model's own images/s at the worker's batch size and precision.

The jobs are queued first, then the worker starts; the rate is measured from the jobs' own
records in the steady state (`toonq.worker.bench.throughput`), as the bench's pipeline section
measures it. A ratio near 1 means the worker keeps the GPU busy.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Final

from toonq.worker.bench.gpu_check.context import CheckContext, describe_error
from toonq.worker.bench.pipeline import sample_png
from toonq.worker.bench.report import Section, markdown_table
from toonq.worker.bench.throughput import measure_throughput
from toonq.worker.cpus import usable_cpus
from toonq.worker.engine.encode import default_png_encoder
from toonq.worker.harness.deployment import Deployment
from toonq.worker.pipeline import (
    default_concurrency,
    default_job_processes,
    model_process_prepares,
)

NAME: Final = "end_to_end"
TITLE: Final = "End to end through a worker process (embedded mode)"
#: Distinct input files; jobs cycle through them.
_INPUTS: Final = 4
#: How long the worker may take to load and warm its model, and the jobs to finish, at most.
_START_TIMEOUT_S: Final = 180.0
_JOBS_TIMEOUT_S: Final = 240.0
#: Lines of the worker's log a failure quotes.
_LOG_LINES: Final = 20


class WorkerRunError(RuntimeError):
    """The worker did not run the jobs; the message ends with the end of its log."""


def run(ctx: CheckContext) -> Section:
    sizes = ctx.sizes
    batch, concurrency = sizes.worker_batch, default_concurrency(sizes.worker_batch)
    side = sizes.e2e_image_side
    # What a worker on this host runs by default, said in the report.
    processes = default_job_processes(ctx.device, usable_cpus())
    settings = {
        "TOONQ_MODEL": sizes.model,
        "TOONQ_DEVICE": str(ctx.device),
        "TOONQ_PRECISION": sizes.worker_precision,
        "TOONQ_RESOLUTION": str(sizes.resolution),
        "TOONQ_MAX_BATCH_SIZE": str(batch),
        "TOONQ_CONCURRENCY": str(concurrency),
        "TOONQ_JOB_PROCESSES": str(processes),
        "TOONQ_LOG_FORMAT": "json",
        "TOONQ_LOG_LEVEL": "WARNING",  # logging costs the measured worker too
        "TOONQ_SWEEP_INTERVAL_S": "0",
    }
    home = Path(tempfile.mkdtemp(prefix="toonq-gpu-check-"))
    try:
        with Deployment(
            postgres_admin_url=None,
            broker_url=None,
            s3_endpoint=None,
            home=home,
            name="gpu-check",
            env=settings,
            actor="gpu-check",
        ) as deployment:
            png = sample_png((side, side))
            uris = [deployment.put_input(f"in-{i}.png", png) for i in range(_INPUTS)]
            job_ids = deployment.submit([uris[i % _INPUTS] for i in range(sizes.e2e_jobs)])
            started = time.monotonic()
            with deployment.start_worker() as worker:
                try:
                    worker.wait_ready(timeout_s=min(_START_TIMEOUT_S, ctx.deadline.remaining()))
                    ready_s = time.monotonic() - started
                    throughput = measure_throughput(
                        deployment,
                        job_ids,
                        timeout_s=max(1.0, min(_JOBS_TIMEOUT_S, ctx.deadline.remaining())),
                        fill=batch,
                        drain=concurrency,
                    )
                except Exception as exc:  # the worker's log says why: keep its end in the report
                    tail = "\n".join(worker.log_tail(_LOG_LINES))
                    raise WorkerRunError(
                        f"{describe_error(exc)}\nthe end of the worker's log:\n{tail}"
                    ) from exc
    finally:
        shutil.rmtree(home, ignore_errors=True)
    data: dict[str, Any] = {
        "status": "ran",
        "device": str(ctx.device),
        "model": sizes.model,
        "precision": sizes.worker_precision,
        "resolution": sizes.resolution,
        "image": f"{side}x{side} PNG",
        # The worker's PNG encoder: imagecodecs' when installed, else Pillow's (slower).
        "png_encoder": default_png_encoder(),
        "max_batch_size": batch,
        "concurrency": concurrency,
        "job_processes": processes,
        # Where images are composited, resized and normalised (TOONQ_PREPARE_IN's default).
        "prepare_in": (
            "model-process" if model_process_prepares("auto", ctx.device) else "job-processes"
        )
        if processes > 1
        else "worker-process",
        "worker_ready_s": round(ready_s, 1),
        **asdict(throughput),
        "jobs_per_s": round(throughput.jobs_per_s, 3),
        # Filled in by `with_model_ratio` once the model alone has been timed.
        "model_images_per_s": None,
        "ratio_to_model": None,
    }
    return Section(NAME, TITLE, data, _markdown(data), _summary(data))


def with_model_ratio(section: Section, ctx: CheckContext) -> Section:
    """`section` with the ratio of its jobs/s to the model's own images/s, eager, at the
    worker's batch size and precision (None where that case was not timed)."""
    if section.data.get("status") != "ran":
        return section
    data = dict(section.data)
    images_per_s = ctx.model_images_per_s.get((data["precision"], False, data["max_batch_size"]))
    if images_per_s:
        data["model_images_per_s"] = images_per_s
        data["ratio_to_model"] = round(data["jobs_per_s"] / images_per_s, 3)
    return replace(section, data=data, markdown=_markdown(data), summary=_summary(data))


def _summary(data: dict[str, Any]) -> str:
    ratio = data["ratio_to_model"]
    return f"{data['jobs_per_s']} jobs/s" + (f", {ratio} of the model's images/s" if ratio else "")


def _processes(job_processes: int) -> str:
    if job_processes == 1:
        return "one process"
    return f"a model process and {job_processes} job processes"


def _markdown(data: dict[str, Any]) -> str:
    note = (
        f"{data['jobs']} jobs on {data['image']} inputs through one `toonq worker` "
        f"({_processes(data['job_processes'])}; `{data['model']}`, {data['precision']}, "
        f"{data['resolution']}x{data['resolution']}, "
        f"batches of up to {data['max_batch_size']}, {data['concurrency']} jobs in flight) on "
        f"{data['device']}, with the embedded database, broker and object store, PNG through "
        f"{data['png_encoder']}. jobs/s in the "
        "steady state; the ratio is to the model's own images/s at the same batch size and "
        "precision."
    )
    table = markdown_table(
        ["succeeded", "worker ready s", "jobs/s", "model images/s", "ratio"],
        [(f"{data['succeeded']}/{data['jobs']}", data["worker_ready_s"], data["jobs_per_s"],
          data["model_images_per_s"], data["ratio_to_model"])],
    )  # fmt: skip
    stages = markdown_table(
        ["stage", "median ms"], [(stage, ms) for stage, ms in data["median_stage_ms"].items()]
    )
    return f"{note}\n\n{table}\n\n{stages}"
