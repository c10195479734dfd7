"""End-to-end throughput, measured from the jobs' own records once a deployment has run them."""

from __future__ import annotations

import os
import statistics
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from toonq.shared.db.schema import JobRow
from toonq.worker.bench.services import WORKER_START_TIMEOUT_S
from toonq.worker.harness.deployment import Deployment


@dataclass(frozen=True)
class Throughput:
    jobs: int
    succeeded: int
    #: Completions per second in the steady state (see `steady_rate`).
    jobs_per_s: float
    median_stage_ms: dict[str, float]


@dataclass(frozen=True)
class WorkerRun:
    throughput: Throughput
    #: The worker's CPU time (user and system) while it ran the jobs, over the jobs.
    cpu_ms_per_job: float
    #: Its threads' context switches while it ran the jobs, over the jobs: how often they
    #: waited for one another (for the GIL, mostly).
    context_switches_per_job: float
    #: The whole machine's CPU time meanwhile, over the jobs: the worker's, and that of the
    #: services it uses (PostgreSQL, Redis) and the kernel on its behalf. None off Linux.
    machine_cpu_ms_per_job: float | None
    #: The share of the machine's CPU time that was busy meanwhile (0 to 1). None off Linux.
    machine_busy: float | None


def run_worker(
    deployment: Deployment,
    job_ids: Sequence[uuid.UUID],
    *,
    cpus: Collection[int] | None = None,
    timeout_s: float,
    fill: int,
    drain: int,
    **env: str,
) -> WorkerRun:
    """Start a worker with `env` (on the CPUs `cpus`, all by default), wait until it is ready,
    let it run `job_ids` to the end, and measure it; the worker stops on return."""
    with deployment.start_worker_on(cpus, **env) as worker:
        worker.wait_ready(timeout_s=WORKER_START_TIMEOUT_S)
        cpu_before, switches_before = worker.cpu_seconds(), worker.context_switches()
        machine_before = machine_cpu_seconds()
        result = measure_throughput(
            deployment, job_ids, timeout_s=timeout_s, fill=fill, drain=drain
        )
        cpu_s = worker.cpu_seconds() - cpu_before
        switches = worker.context_switches() - switches_before
        machine_after = machine_cpu_seconds()
    machine_ms = machine_busy = None
    if machine_before is not None and machine_after is not None:
        busy_s = machine_after[0] - machine_before[0]
        all_s = machine_after[1] - machine_before[1]
        machine_ms = round(busy_s * 1000 / result.jobs, 2)
        machine_busy = round(busy_s / all_s, 3) if all_s else None
    return WorkerRun(
        result,
        round(cpu_s * 1000 / result.jobs, 2),
        round(switches / result.jobs, 1),
        machine_ms,
        machine_busy,
    )


def machine_cpu_seconds() -> tuple[float, float] | None:
    """The machine's CPU time so far, summed over its CPUs: (busy, all); busy is everything but
    idle and waiting for I/O. None where /proc/stat is missing (not Linux)."""
    try:
        # The first line sums every CPU: user nice system idle iowait irq softirq steal ...
        first = Path("/proc/stat").read_text().splitlines()[0]
    except OSError:
        return None
    ticks = [int(field) for field in first.split()[1:9]]
    idle = ticks[3] + ticks[4]
    per_second = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / per_second, sum(ticks) / per_second


def measure_throughput(
    deployment: Deployment,
    job_ids: Sequence[uuid.UUID],
    *,
    timeout_s: float,
    fill: int = 0,
    drain: int = 0,
) -> Throughput:
    """Wait until every job is final, then measure the run from the jobs' own records;
    `fill` and `drain` are passed to `steady_rate`."""
    deployment.wait_until_final(timeout_s=timeout_s)
    rows = _rows(deployment, {str(job_id) for job_id in job_ids})
    return _throughput(rows, steady_rate(_succeeded_at(rows), fill=fill, drain=drain))


def measure_whole_run(
    deployment: Deployment, job_ids: Sequence[uuid.UUID], *, timeout_s: float
) -> Throughput:
    """Wait until every job is final; completions per second from the first claim to the last
    completion. For runs too short to have a steady state: every job in flight at once (long
    jobs, such as animations, of which a worker takes more at once than a run needs), whose
    completions bunch at the end. Filling and draining the pipeline count."""
    deployment.wait_until_final(timeout_s=timeout_s)
    rows = _rows(deployment, {str(job_id) for job_id in job_ids})
    finished = _succeeded_at(rows)
    if not finished:
        raise ValueError(f"none of {len(rows)} jobs succeeded: no rate to measure")
    first_claim = min(row.started_at for row in rows if row.started_at is not None)
    return _throughput(rows, len(finished) / (finished[-1] - first_claim).total_seconds())


@dataclass(frozen=True)
class _JobRecord:
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, Any] | None


def _succeeded_at(rows: Sequence[_JobRecord]) -> list[datetime]:
    """The completion times of the jobs that succeeded, in order."""
    return sorted(row.finished_at for row in rows if row.status == "succeeded" and row.finished_at)


def _throughput(rows: Sequence[_JobRecord], jobs_per_s: float) -> Throughput:
    return Throughput(
        jobs=len(rows),
        succeeded=sum(row.status == "succeeded" for row in rows),
        jobs_per_s=jobs_per_s,
        median_stage_ms=_median_stages([row.timings for row in rows if row.timings]),
    )


def _rows(deployment: Deployment, ids: set[str]) -> list[_JobRecord]:
    # Through the schema's column types: SQLite hands back datetimes and JSON as text otherwise.
    query = select(JobRow.id, JobRow.status, JobRow.started_at, JobRow.finished_at, JobRow.timings)
    with deployment.database.connect() as connection:
        rows = connection.execute(query).all()
    return [_JobRecord(*row[1:]) for row in rows if str(row[0]) in ids]


def steady_rate(finished: Sequence[datetime], *, fill: int, drain: int) -> float:
    """Completions per second while the pipeline is full: the slope of a least-squares line
    through (completion time, count), leaving out the first `fill` completions (the pipeline
    filling up) and the last `drain` (the queue is empty, the pipeline drains). A fit rather
    than first-to-last, because batched work completes in steps of a batch."""
    window = sorted(finished)[fill : len(finished) - drain]
    if len(window) < 3:
        raise ValueError(f"too few completions to measure a rate: {len(window)}")
    seconds = [(t - window[0]).total_seconds() for t in window]
    slope, _ = statistics.linear_regression(seconds, range(len(window)))
    return slope


def _median_stages(timings: Sequence[dict[str, float]]) -> dict[str, float]:
    stages = {stage for t in timings for stage in t}
    return {
        stage: round(statistics.median(t[stage] for t in timings if stage in t), 1)
        for stage in sorted(stages)
    }
