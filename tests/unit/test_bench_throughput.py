"""What the end-to-end benchmark sections read off the machine."""

from __future__ import annotations

import hashlib
import sys
import time

import pytest

from toonq.worker.bench.throughput import machine_cpu_seconds

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/stat")


def test_the_machine_cpu_time_counts_this_process_busy_work():
    before = machine_cpu_seconds()
    own_before = time.process_time()
    data = bytes(1 << 20)
    while time.process_time() - own_before < 0.3:
        hashlib.sha256(data).digest()
    own = time.process_time() - own_before
    after = machine_cpu_seconds()
    assert before is not None
    assert after is not None
    busy, every = after[0] - before[0], after[1] - before[1]
    # Ticks of 10 ms on each side: this process's own work is part of the machine's busy time.
    assert busy >= own - 0.05
    assert busy <= every
