"""Timing cases: a warm-up run each, then the median of `repeat` runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    #: The warm-up run, which pays one-off costs (allocation, autotuning, compilation).
    first_ms: float
    #: The median of the timed runs after it.
    median_ms: float


def time_call(
    fn: Callable[[], object],
    *,
    repeat: int,
    device: torch.device | None = None,
    budget_s: float | None = None,
) -> Timing:
    """Time `fn`; on a CUDA `device`, each run ends with a sync so its kernels count. With a
    `budget_s`, the timed runs stop early once they have taken that long (at least one runs)."""

    def run_ms() -> float:
        start = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1000

    first = run_ms()
    times = [run_ms()]
    while len(times) < repeat and (budget_s is None or sum(times) < budget_s * 1000):
        times.append(run_ms())
    return Timing(first, statistics.median(times))


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    *,
    repeat: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """The median milliseconds of each of `fns` (CPU work), run in turns after one warm-up each,
    so that a change in the machine's load weighs on all of them alike. `clock` is wall time by
    default; `time.process_time` counts the process's CPU time instead (kernel time included:
    page faults count)."""
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, times in zip(fns, samples, strict=True):
            start = clock()
            fn()
            times.append((clock() - start) * 1000)
    return [statistics.median(times) for times in samples]
