"""The worker keeps freed image buffers for the next image instead of faulting them in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from toonq.worker.allocator import keep_freed_memory

# Composites a 4 MP image onto grey 40 times, then prints the page faults that took.
_CHURN = """
import resource, sys
import numpy as np
from toonq.worker.allocator import keep_freed_memory
from toonq.worker.engine.compositing import composite_rgb
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
image = np.full((2048, 2048, 4), 200, dtype=np.uint8)
composite_rgb(image)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    composite_rgb(image)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn(mode: str) -> tuple[bool, int]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    env.pop("LD_PRELOAD", None)
    env.pop("GLIBC_TUNABLES", None)
    result = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], env=env, capture_output=True, text=True, check=True
    )
    tuned, faults = result.stdout.splitlines()[-1].split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_freed_buffers_are_reused_without_page_faults() -> None:
    tuned, faults = _churn("tuned")
    plain_tuned, plain_faults = _churn("plain")

    assert (tuned, plain_tuned) == (True, False)
    # Each composite's output alone is 3072 pages, faulted in again each time without the tuning.
    assert plain_faults > 10 * 3072
    assert faults < 3072


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("MALLOC_ARENA_MAX", "2"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536"),
        ("LD_PRELOAD", "libjemalloc.so.2"),
    ],
)
def test_an_operator_s_malloc_settings_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    assert keep_freed_memory() is False
