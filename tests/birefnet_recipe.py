"""The birefnet-dev fixture in the tests: where its files are, and its weights generated once per
session. The recipe itself is `toonq.worker.bench.birefnet_dev`, which `toonq gpu-check` shares.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from toonq.worker.bench.birefnet_dev import (
    RECIPE_SHA256,
    Array,
    generate_weights,
    read_keys,
    sha256_of,
)

__all__ = [
    "FIXTURE",
    "RECIPE_SHA256",
    "TOONOUT_KEYS",
    "fixture_arrays",
    "fixture_state_dict",
    "read_keys",
    "sha256_of",
]

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "birefnet-dev"
TOONOUT_KEYS = DATA / "toonout_keys.tsv"


@functools.cache
def fixture_arrays() -> dict[str, Array]:
    """The fixture weights, generated once per test session (about a second)."""
    return generate_weights(FIXTURE / "keys.tsv")


def fixture_state_dict() -> dict[str, torch.Tensor]:
    """A fresh state dict of the fixture weights (copies: callers may modify or assign them)."""
    return {k: torch.from_numpy(v.copy()) for k, v in fixture_arrays().items()}
