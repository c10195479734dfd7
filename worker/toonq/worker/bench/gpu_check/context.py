"""What every part of the check shares: the device, the sizes, the time left and the model."""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch

from toonq.worker.bench.gpu_check.plan import Sizes
from toonq.worker.bench.model import first_paragraph
from toonq.worker.bench.report import Section
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.weights import LoadedModel, load_model


class Deadline:
    """The end of the check's time, `seconds` from now."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.remaining() <= 0


@dataclass
class CheckContext:
    device: torch.device
    sizes: Sizes
    deadline: Deadline
    fixture_dir: Path
    #: images/s of the model alone, by (precision, compiled, batch size), as the throughput
    #: part measures them: what the end-to-end part is compared with.
    model_images_per_s: dict[tuple[str, bool, int], float] = field(default_factory=dict)

    @cached_property
    def master(self) -> LoadedModel:
        """The check's model on the CPU, built once (ToonOut's takes seconds to initialise)."""
        return load_model(self.sizes.model)

    def model_copy(self) -> LoadedModel:
        """A copy of the model for one engine, which moves it to its device and precision."""
        return replace(self.master, model=copy.deepcopy(self.master.model))

    def worker_engine(self) -> MattingEngine:
        """An engine on a copy of the model, at the worker's precision and resolution
        (`Sizes.worker_precision`, `Sizes.resolution`): what the GPU loop runs."""
        return MattingEngine(
            self.model_copy(),
            device=str(self.device),
            precision=self.sizes.worker_precision,
            resolution=self.sizes.resolution,
        )

    def release_memory(self) -> None:
        """Give what the last part left on the device back, so the next one starts clean (and
        its peak memory is its own)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def skipped(name: str, title: str, reason: str) -> Section:
    """A part that did not run, and why."""
    return Section(name, title, {"status": "skipped", "reason": reason}, reason, reason)


def describe_error(exc: Exception) -> str:
    """What went wrong, on one line, for the report."""
    return f"{type(exc).__name__}: {first_paragraph(exc)}"
