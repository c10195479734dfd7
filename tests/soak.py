"""The soak test: a steady stream of jobs through several workers while they are SIGKILLed and
restarted at random, then an audit of every job.

    python -m tests.soak --jobs 1000 --workers 3 --kills 10

runs on PostgreSQL, Redis and S3 (moto) servers of its own and prints a JSON summary (jobs,
workers, kills, restarts, succeeded, failed, lost, duplicated, max_recovery_s, wall_s, ...). It
exits with status 1 when a job was lost, done twice or left without its output. `run_soak` is
also what tests/system/test_soak.py runs, at a smaller size.

Recovery time is measured per kill: from the SIGKILL until every job the dead worker was running
reached a final state on another worker. It includes the queue's backlog at that moment, since
the message that re-sends a reclaimed job waits behind the others.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.cluster import Audit, Cluster, JobRecord, running_cluster
from tests.servers import PrivatePostgres, PrivateRedis
from toonq.worker.harness.moto import MotoServer, local_s3_credentials

#: Jobs per producer call: the producer submits in small batches, as a backend would.
SUBMIT_BATCH = 5
#: How long a kill waits for a worker with jobs in hand, the victim it prefers.
BUSY_WAIT_S = 5.0
#: How long a kill waits for any worker to consume before the soak gives up.
READY_TIMEOUT_S = 180.0
#: Lost or duplicated jobs listed by id in the summary, at most.
MAX_LISTED = 20


@dataclass(frozen=True)
class SoakPlan:
    jobs: int = 1000
    workers: int = 3
    kills: int = 10
    #: Jobs submitted per second, evenly; the kills are spread over the submitting time.
    rate: float = 5.0
    lease_s: int = 3
    sweep_interval_s: int = 1
    #: How long the jobs may take to settle once the last one was submitted.
    drain_timeout_s: float = 300.0
    seed: int = 0

    def worker_env(self) -> dict[str, str]:
        return {
            "TOONQ_LEASE_SECONDS": str(self.lease_s),
            "TOONQ_SWEEP_INTERVAL_S": str(self.sweep_interval_s),
            # Far out of reach: only leases may bring back the jobs of a killed worker.
            "TOONQ_VISIBILITY_TIMEOUT_S": "3600",
            "TOONQ_RESEND_AFTER_S": "3600",
            "TOONQ_MAX_ATTEMPTS": "5",
        }


@dataclass(frozen=True)
class Kill:
    worker: str
    at: float  # time.time()
    #: The jobs the worker was running when it died.
    held: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class SoakResult:
    plan: SoakPlan
    audit: Audit
    kills: list[Kill]
    restarts: int
    wall_s: float

    @property
    def recovery_s(self) -> list[float]:
        """Per kill that caught jobs in hand: seconds until the last of them was final."""
        times = []
        for kill in self.kills:
            finished = [self.audit.jobs[job_id].finished_at for job_id in kill.held]
            if finished and all(at is not None for at in finished):
                times.append(max(at.timestamp() for at in finished if at) - kill.at)
        return times

    @property
    def max_recovery_s(self) -> float | None:
        times = self.recovery_s
        return round(max(times), 2) if times else None

    def summary(self) -> dict[str, object]:
        audit = self.audit
        statuses = audit.statuses
        return {
            "jobs": len(audit.jobs),
            "workers": self.plan.workers,
            "kills": len(self.kills),
            "restarts": self.restarts,
            "succeeded": statuses["succeeded"],
            "failed": statuses["failed"],
            "cancelled": statuses["cancelled"],
            "lost": len(audit.lost),
            "duplicated": len(audit.duplicated),
            "missing_outputs": len(audit.missing_outputs),
            "lost_jobs": [_describe(audit.jobs[job_id]) for job_id in audit.lost[:MAX_LISTED]],
            "duplicated_jobs": [str(job_id) for job_id in audit.duplicated[:MAX_LISTED]],
            "jobs_held_by_killed_workers": sum(len(kill.held) for kill in self.kills),
            "reclaimed": audit.event_count("reclaimed"),
            "max_recovery_s": self.max_recovery_s,
            "recovery_s": [round(seconds, 2) for seconds in self.recovery_s],
            "error_codes": dict(audit.error_codes),
            "wall_s": round(self.wall_s, 1),
            "jobs_per_s": round(len(audit.jobs) / self.wall_s, 2),
            "plan": asdict(self.plan),
        }

    @property
    def sound(self) -> bool:
        audit = self.audit
        return not (audit.lost or audit.duplicated or audit.missing_outputs)


def _describe(job: JobRecord) -> dict[str, object]:
    """What a lost job was left doing, to tell which path failed it."""
    return {
        "id": str(job.id),
        "status": job.status,
        "worker": job.worker,
        "attempts": job.attempts,
        "sent_at": job.sent_at and job.sent_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
    }


class _Chaos:
    """The live workers, one per slot, and the kills: each victim is replaced at once by a new
    worker under a new name, as an orchestrator would restart a crashed pod."""

    def __init__(self, cluster: Cluster, slots: int, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.generation = [0] * slots
        self.kills: list[Kill] = []
        self.restarts = 0
        cluster.start_workers(*(self._name(slot) for slot in range(slots)))

    def _name(self, slot: int) -> str:
        return f"w{slot}-{self.generation[slot]}"

    def _victim(self) -> int:
        """A slot whose worker consumes and is running jobs, waiting a little for one to be;
        else any slot whose worker consumes (a kill must hit a working worker, not one that
        is still loading its model)."""
        slots = range(len(self.generation))
        started = time.monotonic()
        while time.monotonic() < started + READY_TIMEOUT_S:
            ready = [slot for slot in slots if self.cluster.worker(self._name(slot)).ready]
            busy = [slot for slot in ready if self.cluster.running_on(self._name(slot))]
            if busy:
                return self.rng.choice(busy)
            if ready and time.monotonic() > started + BUSY_WAIT_S:
                return self.rng.choice(ready)
            time.sleep(0.05)
        raise RuntimeError(f"no worker consumes; their logs are in {self.cluster.home}")

    def kill_one(self) -> None:
        """SIGKILL a worker and start its replacement."""
        slot = self._victim()
        name = self._name(slot)
        self.cluster.worker(name).kill()
        killed_at = time.time()
        # Read again once it is dead: nothing can change its jobs any more.
        self.kills.append(Kill(name, killed_at, tuple(self.cluster.running_on(name))))
        self.generation[slot] += 1
        self.cluster.start_worker(self._name(slot))
        self.restarts += 1


def _submit_steadily(cluster: Cluster, plan: SoakPlan, inputs: list[str]) -> None:
    started = time.monotonic()
    for first in range(0, plan.jobs, SUBMIT_BATCH):
        count = min(SUBMIT_BATCH, plan.jobs - first)
        cluster.submit([inputs[(first + i) % len(inputs)] for i in range(count)])
        time.sleep(max(0.0, started + (first + count) / plan.rate - time.monotonic()))


def _settle(cluster: Cluster, timeout: float) -> None:
    """Wait until every job is final, or `timeout` passes (the audit then counts the rest)."""
    with suppress(TimeoutError):
        cluster.wait_until_final(timeout_s=timeout, poll_s=0.5)


def run_soak(cluster: Cluster, plan: SoakPlan) -> SoakResult:
    """Run `plan` on `cluster` (whose workers must have `plan.worker_env()`)."""
    rng = random.Random(plan.seed)
    chaos = _Chaos(cluster, plan.workers, rng)
    inputs = cluster.put_inputs()
    started = time.monotonic()
    submitter = threading.Thread(
        target=_submit_steadily, args=(cluster, plan, inputs), name="soak-submitter"
    )
    submitter.start()
    submit_s = plan.jobs / plan.rate
    for kill in range(plan.kills):
        # Evenly spread over the submitting time, each a little early or late.
        due = submit_s * (kill + 1 + rng.uniform(-0.3, 0.3)) / (plan.kills + 1)
        time.sleep(max(0.0, started + due - time.monotonic()))
        chaos.kill_one()
    submitter.join()
    _settle(cluster, plan.drain_timeout_s)
    wall_s = time.monotonic() - started
    return SoakResult(plan, cluster.audit(), chaos.kills, chaos.restarts, wall_s)


# --- The command line -----------------------------------------------------------------------------


@contextmanager
def _own_servers(log_dir: Path, plan: SoakPlan) -> Iterator[Cluster]:
    """PostgreSQL, Redis and S3 servers of the soak's own, and a cluster on them."""
    with ExitStack() as stack:
        stack.enter_context(local_s3_credentials())
        postgres = stack.enter_context(PrivatePostgres())
        broker = stack.enter_context(PrivateRedis())
        s3 = stack.enter_context(MotoServer())
        yield stack.enter_context(
            running_cluster(
                postgres_admin_url=postgres.url,
                broker_url=broker.url,
                s3_endpoint=s3.url,
                log_dir=log_dir,
                env=plan.worker_env(),
            )
        )


def main(argv: list[str] | None = None) -> int:
    defaults = SoakPlan()
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak",
        description="Jobs through workers that are killed and restarted; prints a JSON summary.",
    )
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="jobs per second")
    parser.add_argument("--lease-s", type=int, default=defaults.lease_s)
    parser.add_argument("--sweep-interval-s", type=int, default=defaults.sweep_interval_s)
    parser.add_argument("--drain-timeout-s", type=float, default=defaults.drain_timeout_s)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--log-dir", type=Path, help="where worker logs go [a new temp folder]")
    args = parser.parse_args(argv)
    plan = SoakPlan(
        jobs=args.jobs,
        workers=args.workers,
        kills=args.kills,
        rate=args.rate,
        lease_s=args.lease_s,
        sweep_interval_s=args.sweep_interval_s,
        drain_timeout_s=args.drain_timeout_s,
        seed=args.seed,
    )
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="toonq-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    with _own_servers(log_dir, plan) as cluster:
        result = run_soak(cluster, plan)
    print(json.dumps(result.summary() | {"logs": str(log_dir)}, indent=2))
    return 0 if result.sound else 1


if __name__ == "__main__":
    sys.exit(main())
