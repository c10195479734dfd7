"""How many CPUs a worker may use, and keeping its image work within them.

A container sees every core of its host in `os.cpu_count()`, and PyTorch sizes its thread pool
from the host too: on a 64-core node under a 4-CPU limit, both would run 16 times more threads
than they get CPU for. The worker sizes itself from what it may actually run on: its CPU
affinity (`taskset`, cpusets), capped by the cgroup CPU quota (Kubernetes `limits.cpu`), unless
`TOONQ_CPU_WORKERS` says otherwise.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: cgroup v2, then v1: the CPU quota of this process's group, if it has one.
_CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def usable_cpus(
    *,
    cgroup_v2_max: Path = _CGROUP_V2_MAX,
    cgroup_v1_quota: Path = _CGROUP_V1_QUOTA,
    cgroup_v1_period: Path = _CGROUP_V1_PERIOD,
) -> int:
    """The CPUs this process may run on: its affinity, capped by its cgroup's CPU quota
    (rounded up: a quota of 1.5 CPUs keeps two threads busy part of the time)."""
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:  # macOS: no affinity
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_v2_max, cgroup_v1_quota, cgroup_v1_period)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def _cgroup_quota(v2_max: Path, v1_quota: Path, v1_period: Path) -> float | None:
    try:
        quota, period = v2_max.read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(v1_quota.read_text())
        return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    except (OSError, ValueError):
        return None


class CpuSlots:
    """At most `count` jobs in their CPU-heavy stages (decode and prepare, finish and encode)
    at once, however many are in flight: more would only share the same cores, and hold more
    decoded images in memory. Waiting for I/O or for the GPU never holds a slot."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"at least one CPU slot is needed, got {count}")
        self.count = count
        self._slots = threading.BoundedSemaphore(count)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._slots:
            yield
