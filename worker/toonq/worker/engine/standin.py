"""A stand-in for the model whose cost is a fixed wait: for benchmarks and soak tests.

`standin:MS` runs each batch in MS milliseconds of sleep, whatever its size, then returns
all-zero logits (alpha 127 everywhere). A sleeping thread releases the GIL the way a host thread
waiting on a GPU does, so the pipeline around it behaves as it would around a real GPU whose
throughput limit is `max batch size / MS`, while the CPU is left to everything else.
"""

from __future__ import annotations

import time

import torch
from torch import nn

STANDIN_PREFIX = "standin:"


class StandInModel(nn.Module):
    def __init__(self, latency_ms: float) -> None:
        super().__init__()
        if latency_ms < 0:
            raise ValueError(f"latency must be >= 0 ms, got {latency_ms}")
        self.latency_ms = latency_ms
        # A buffer, so that moving the model to a device or dtype behaves as for a real one.
        self.zero: torch.Tensor
        self.register_buffer("zero", torch.zeros(()))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        time.sleep(self.latency_ms / 1000)
        batch, _, height, width = pixel_values.shape
        return self.zero.expand(batch, 1, height, width)
