"""`toonq worker` asked for a GPU it cannot use exits at once, before it loads the model (whose
download can take minutes), instead of running on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.support import run_toonq

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # Weights that do not exist: a worker that got past the device check fails on them instead.
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOONQ_")}
    return env | {"TOONQ_HOME": str(tmp_path), "TOONQ_MODEL": str(tmp_path / "none.pth")} | extra


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--gpu", "0"], {}, "--gpu 0: device 'cuda' requested but CUDA is not available"),
        ([], {"TOONQ_DEVICE": "cuda"}, "device 'cuda' requested but CUDA is not available"),
        ([], {"TOONQ_DEVICE": "cuda:1"}, "device 'cuda:1' requested but CUDA is not available"),
        (["--device", "cuda"], {}, "device 'cuda' requested but CUDA is not available"),
        (["--gpu", "0", "--device", "cpu"], {}, "--gpu 0 pins a GPU but the device is cpu"),
    ],
)
def test_a_gpu_worker_without_a_gpu_exits_before_loading_the_model(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_toonq("worker", *args, env=worker_env(tmp_path, **env))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error [configuration_error]: {expected}")
    if "cpu" not in args:
        assert "--device cpu (TOONQ_DEVICE=cpu)" in result.stderr


@pytest.mark.parametrize(
    ("args", "env"), [(["--device", "cpu"], {}), ([], {"TOONQ_DEVICE": "cpu"}), ([], {})]
)
def test_a_cpu_worker_goes_on_to_load_its_model(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    result = run_toonq("worker", *args, env=worker_env(tmp_path, **env))

    assert result.returncode == 1
    assert result.stderr.startswith("error [model_unavailable]")
