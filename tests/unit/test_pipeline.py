"""How a worker sizes itself: its job processes beside the model process."""

from __future__ import annotations

import pytest
import torch

from toonq.worker.pipeline import default_job_processes


@pytest.mark.parametrize(("cpus", "processes"), [(1, 1), (4, 1), (7, 1), (8, 2), (12, 3), (64, 4)])
def test_a_gpu_worker_runs_one_job_process_per_four_cpus_up_to_four(
    cpus: int, processes: int
) -> None:
    assert default_job_processes(torch.device("cuda"), cpus) == processes


def test_a_cpu_worker_runs_in_one_process_however_many_cpus() -> None:
    assert default_job_processes(torch.device("cpu"), 64) == 1
