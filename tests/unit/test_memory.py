"""The worker's memory budget: reservations wait in arrival order, are given back on every path,
and a need larger than the whole budget fails at once; the default budget comes from the cgroup
memory limit."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from toonq.shared.errors import ConfigurationError, ImageTooLargeError
from toonq.worker.memory import MIB, MemoryBudget, default_budget_bytes, memory_limit_bytes

#: Long enough for a thread that should be blocked to have run on a loaded machine.
SETTLE_S = 0.3


def machine_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def hold(budget: MemoryBudget, nbytes: int, order: list[str], name: str) -> threading.Event:
    """A thread that reserves `nbytes`, notes `name` in `order` once it holds them, and keeps
    them until the returned event is set."""
    done = threading.Event()

    def run() -> None:
        with budget.reserved(nbytes, what=name):
            order.append(name)
            done.wait(10)

    threading.Thread(target=run, daemon=True).start()
    return done


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def test_a_reservation_is_held_for_its_block_and_given_back() -> None:
    budget = MemoryBudget(100)
    with budget.reserved(60, what="a 10x6 image"):
        assert budget.reserved_bytes == 60
    assert budget.reserved_bytes == 0


def test_an_error_in_the_block_gives_the_reservation_back() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(RuntimeError), budget.reserved(100, what="a 10x10 image"):
        raise RuntimeError("the encoder failed")
    assert budget.reserved_bytes == 0
    with budget.reserved(100, what="a 10x10 image"):
        assert budget.reserved_bytes == 100


def test_a_need_over_the_whole_budget_fails_at_once_naming_the_setting() -> None:
    budget = MemoryBudget(512 * MIB)
    with pytest.raises(ImageTooLargeError) as raised, budget.reserved(600 * MIB, what="a big one"):
        pytest.fail("the block must not run")
    assert raised.value.code == "image_too_large"
    assert raised.value.message == (
        "a big one needs about 600 MiB of memory, more than this worker's whole memory budget "
        "of 512 MiB (TOONQ_MEMORY_BUDGET_MB)"
    )
    assert budget.reserved_bytes == 0


def test_jobs_wait_while_the_budget_is_spent_and_go_in_arrival_order() -> None:
    budget = MemoryBudget(100)
    order: list[str] = []
    first = hold(budget, 70, order, "first")
    wait_for(lambda: order == ["first"])
    # The small one would fit beside `first`, but the large one came first: it waits its turn.
    large = hold(budget, 80, order, "large")
    time.sleep(SETTLE_S)
    small = hold(budget, 30, order, "small")
    time.sleep(SETTLE_S)
    assert order == ["first"]

    first.set()
    wait_for(lambda: order == ["first", "large"])
    time.sleep(SETTLE_S)
    assert order == ["first", "large"]  # 80 + 30 does not fit
    large.set()
    wait_for(lambda: order == ["first", "large", "small"])
    small.set()
    wait_for(lambda: budget.reserved_bytes == 0)


def test_waiters_that_fit_together_all_go() -> None:
    budget = MemoryBudget(100)
    order: list[str] = []
    first = hold(budget, 100, order, "first")
    wait_for(lambda: order == ["first"])
    others = [hold(budget, 30, order, f"job-{n}") for n in range(3)]
    time.sleep(SETTLE_S)
    first.set()
    wait_for(lambda: len(order) == 4)
    assert budget.reserved_bytes == 90
    for done in others:
        done.set()
    wait_for(lambda: budget.reserved_bytes == 0)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_limit_is_the_lowest_of_the_process_cgroup_and_those_above_v2(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/kubepods/pod1/worker\n")
    write(tmp_path / "cgroup/kubepods/pod1/memory.max", f"{2048 * MIB}\n")
    write(tmp_path / "cgroup/kubepods/pod1/worker/memory.max", "max\n")

    assert memory_limit_bytes(cgroup_root=tmp_path / "cgroup", proc_cgroup=proc) == 2048 * MIB


def test_the_limit_is_read_from_cgroup_v1(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n")
    write(tmp_path / "cgroup/memory/docker/abc/memory.limit_in_bytes", f"{512 * MIB}\n")

    assert memory_limit_bytes(cgroup_root=tmp_path / "cgroup", proc_cgroup=proc) == 512 * MIB


def test_without_a_limit_the_machine_ram_is_the_limit(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "4:memory:/\n")
    # cgroup v1's "unlimited".
    write(tmp_path / "cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")

    assert memory_limit_bytes(cgroup_root=tmp_path / "cgroup", proc_cgroup=proc) == machine_ram()


def test_the_default_budget_leaves_out_the_process_and_the_inputs_in_flight() -> None:
    budget = default_budget_bytes(concurrency=4, max_input_bytes=MIB, limit_bytes=64 * 1024 * MIB)
    # This test process's peak resident memory, at least, is left out.
    assert 0 < budget < 64 * 1024 * MIB - 4 * MIB


def test_a_limit_that_leaves_nothing_for_images_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="TOONQ_MEMORY_BUDGET_MB"):
        default_budget_bytes(concurrency=34, max_input_bytes=100 * MIB, limit_bytes=2048 * MIB)
