"""Queue overhead: jobs/s through Celery, Redis and PostgreSQL when the job itself costs nothing.

A no-op model (`standin:0`) on 32x32 inputs read from and written to local files: what is left
is the producer's insert and send, the message, the claim, the lease, the outcome and the
acknowledgement, i.e. the per-job price of the queue's guarantees. Its yardstick, measured in
the same run with as many messages in flight: a bare Celery no-op task on the same settings
(threads pool, late acks, same Redis), whose per-task time is what Celery alone costs.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from toonq.shared.queue import create_celery_app
from toonq.shared.settings import Settings
from toonq.worker.bench.images import solid_png
from toonq.worker.bench.noop_app import DONE_MARK, NOOP_TASK
from toonq.worker.bench.report import BenchOptions, Section, markdown_table, percent
from toonq.worker.bench.services import bench_deployment
from toonq.worker.bench.throughput import run_worker, steady_rate
from toonq.worker.cpus import usable_cpus
from toonq.worker.harness.deployment import Deployment
from toonq.worker.harness.process import ChildProcess

#: The side of the inputs: small enough that the job itself costs nothing.
SIZE = 32
_IN_FLIGHT = (1, 18)


def _runs() -> list[tuple[int, int]]:
    """(jobs in flight, job processes): one process, then, where there are several CPUs, the
    18 jobs in as many job processes as CPUs beside the model process."""
    cpus = usable_cpus()
    return [(jobs, 1) for jobs in _IN_FLIGHT] + ([(_IN_FLIGHT[-1], cpus)] if cpus > 1 else [])


def run(options: BenchOptions) -> Section:
    jobs = 60 if options.quick else 400
    rows = []
    bare: dict[int, float] = {}
    with bench_deployment(use_s3=False) as deployment:
        uri = deployment.put_input("tiny.png", solid_png(SIZE))
        for concurrency, processes in _runs():
            toonq = _toonq_run(
                deployment, uri, jobs=jobs, concurrency=concurrency, processes=processes
            )
            if concurrency not in bare:
                bare[concurrency] = _bare_celery_ms_per_task(
                    deployment, tasks=jobs, concurrency=concurrency
                )
            bare_ms = bare[concurrency]
            rows.append(
                toonq
                | {
                    "bare_celery_ms_per_task": round(bare_ms, 2),
                    "overhead_ratio": round(toonq["ms_per_job"] / bare_ms, 2),
                }
            )
    table = markdown_table(
        [
            "jobs in flight",
            "job processes",
            "jobs",
            "succeeded",
            "jobs/s",
            "ms per job",
            "worker CPU ms per job",
            "worker context switches per job",
            "machine CPU ms per job",
            "machine busy",
            "bare Celery ms per task",
            "ratio",
        ],
        [
            [
                r["jobs_in_flight"],
                r["job_processes"],
                r["jobs"],
                r["succeeded"],
                r["jobs_per_s"],
                r["ms_per_job"],
                r["cpu_ms_per_job"],
                r["context_switches_per_job"],
                r["machine_cpu_ms_per_job"],
                percent(r["machine_busy"]),
                r["bare_celery_ms_per_task"],
                r["overhead_ratio"],
            ]
            for r in rows
        ],
    )
    return Section(
        name="queue",
        title="Queue overhead (Celery + Redis + PostgreSQL, no-op model)",
        data={"runs": rows},
        markdown=table
        + "\n\nratio: toonq's time per job over a bare Celery no-op task's, same run, same "
        "settings, as many messages in flight. Job processes: 1, the worker's one process; more, "
        "that many beside its model process (`TOONQ_JOB_PROCESSES`). CPU and context switches: "
        "the worker's threads', all its processes', over the jobs. Machine CPU: every "
        "process's (the worker's, PostgreSQL's, Redis's, the kernel's) over the jobs, and the "
        "share of the machine's CPU time that was busy: a worker that keeps the machine busy "
        "gets faster only by doing less per job, there or in the services.",
        summary=", ".join(
            f"{r['jobs_in_flight']} in flight in {r['job_processes']} process(es): "
            f"{r['jobs_per_s']} jobs/s ({r['overhead_ratio']}x bare Celery)"
            for r in rows
        ),
    )


def _toonq_run(
    deployment: Deployment, uri: str, *, jobs: int, concurrency: int, processes: int
) -> dict[str, Any]:
    run = run_worker(
        deployment,
        deployment.submit([uri] * jobs, resolution=SIZE),
        timeout_s=300,
        fill=concurrency,
        drain=concurrency,
        TOONQ_MODEL="standin:0",
        TOONQ_RESOLUTION=str(SIZE),
        TOONQ_MAX_BATCH_SIZE="8",
        TOONQ_MAX_BATCH_WAIT_MS="1",
        TOONQ_CONCURRENCY=str(concurrency),
        TOONQ_JOB_PROCESSES=str(processes),
    )
    result = run.throughput
    return {
        "jobs_in_flight": concurrency,
        "job_processes": processes,
        "jobs": result.jobs,
        "succeeded": result.succeeded,
        "jobs_per_s": round(result.jobs_per_s, 1),
        "ms_per_job": round(1000 / result.jobs_per_s, 2),
        # All the worker's CPU time while it ran the jobs, over the jobs: Python holding the
        # GIL for nearly all of it, on a no-op model.
        "cpu_ms_per_job": run.cpu_ms_per_job,
        # Each one a thread that gave up its core, mostly to wait for the GIL: with more jobs
        # in flight, the measure of how much the jobs' threads contend for it.
        "context_switches_per_job": run.context_switches_per_job,
        "machine_cpu_ms_per_job": run.machine_cpu_ms_per_job,
        "machine_busy": run.machine_busy,
        "median_stage_ms": result.median_stage_ms,
    }


def _bare_celery_ms_per_task(deployment: Deployment, *, tasks: int, concurrency: int) -> float:
    sender = create_celery_app(Settings.from_env(deployment.env))
    for _ in range(tasks):
        sender.send_task(NOOP_TASK, queue=deployment.queue, ignore_result=True)
    log_path = deployment.home / f"bare-celery-{concurrency}.log"
    command = [
        sys.executable,
        *("-m", "celery", "-A", "toonq.worker.bench.noop_app", "worker"),
        *("--pool", "threads", "--concurrency", str(concurrency)),
        *("--queues", deployment.queue, "--without-mingle", "--without-gossip"),
        *("--loglevel", "WARNING"),
    ]
    with ChildProcess(
        command, name="the bare Celery worker", log_path=log_path, env=deployment.env
    ) as worker:
        worker.wait_until(
            lambda: len(_completions(log_path)) >= tasks,
            waiting_for=f"{tasks} no-op tasks",
            timeout_s=300,
        )
    finished = [datetime.fromtimestamp(t, UTC) for t in _completions(log_path)]
    return 1000 / steady_rate(finished, fill=concurrency, drain=concurrency)


def _completions(log_path: Path) -> list[float]:
    lines = log_path.read_text(errors="replace").splitlines()
    return [float(line.split()[1]) for line in lines if line.startswith(DONE_MARK + " ")]
