"""The worker sizes itself from the CPUs it may use, and keeps its image work within them."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from toonq.worker.cpus import CpuSlots, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def cpus_under(tmp_path: Path, *, v2: str | None = None, v1: tuple[str, str] | None = None) -> int:
    v2_max, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    if v2 is not None:
        v2_max.write_text(v2)
    if v1 is not None:
        quota.write_text(v1[0])
        period.write_text(v1[1])
    return usable_cpus(cgroup_v2_max=v2_max, cgroup_v1_quota=quota, cgroup_v1_period=period)


def test_without_a_quota_the_affinity_counts(tmp_path: Path) -> None:
    assert cpus_under(tmp_path) == AFFINITY
    assert cpus_under(tmp_path, v2="max 100000\n") == AFFINITY
    assert cpus_under(tmp_path, v1=("-1", "100000")) == AFFINITY


def test_a_cgroup_v2_quota_caps_it_rounded_up(tmp_path: Path) -> None:
    assert cpus_under(tmp_path, v2="50000 100000\n") == 1
    assert cpus_under(tmp_path, v2="100000 100000\n") == 1
    assert cpus_under(tmp_path, v2="6400000 100000\n") == AFFINITY  # more quota than CPUs


@pytest.mark.skipif(AFFINITY < 2, reason="needs two CPUs in the affinity")
def test_a_fractional_quota_keeps_a_second_cpu_partly_busy(tmp_path: Path) -> None:
    assert cpus_under(tmp_path, v2="150000 100000\n") == 2


def test_a_cgroup_v1_quota_caps_it(tmp_path: Path) -> None:
    assert cpus_under(tmp_path, v1=("100000", "100000")) == 1


def test_an_unreadable_quota_is_no_quota(tmp_path: Path) -> None:
    assert cpus_under(tmp_path, v2="garbage") == AFFINITY


def test_cpu_slots_bound_the_jobs_in_their_cpu_stages() -> None:
    slots = CpuSlots(2)
    inside, most = 0, 0
    lock = threading.Lock()

    def stage() -> None:
        nonlocal inside, most
        with slots.held():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=stage) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2


def test_cpu_slots_need_one_slot() -> None:
    with pytest.raises(ValueError, match="at least one"):
        CpuSlots(0)
