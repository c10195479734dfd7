"""What `toonq gpu-check` measures, and at which sizes.

`FULL` is the check for a machine with a CUDA GPU: ToonOut's architecture with random weights
(they cost exactly what the real ones do, with no download) at 1024x1024, sized to run within
`TIME_LIMIT_S`. `QUICK` runs every path of the check at tiny sizes, in seconds even on a CPU:
it shows that the check works, not what a machine sustains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from toonq.worker.bench.birefnet_dev import FIXTURE_DIR

#: Where reports go unless told otherwise (git-ignored with the rest of `.toonq/`).
DEFAULT_OUT_DIR: Final = Path(".toonq/gpu-check")
#: The parts of the check stay within this: 7 of its 8 minutes, the rest being for installing,
#: Python's and torch's start, and a last case that takes longer than expected.
TIME_LIMIT_S: Final = 420.0
#: Every precision the engine offers; fp32 is the reference the others are compared with.
PRECISIONS: Final = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class CheckOptions:
    quick: bool = False
    time_limit_s: float = TIME_LIMIT_S
    out_dir: Path = DEFAULT_OUT_DIR
    fixture_dir: Path = FIXTURE_DIR


@dataclass(frozen=True)
class Sizes:
    """The sizes of every part of the check."""

    #: `random:PRESET` weights for everything but the fixture.
    model: str
    #: The model's input side; the images of the precision and end-to-end parts have this side
    #: too, except `e2e_image_side`.
    resolution: int
    #: Images whose half-precision masks are compared with fp32.
    precision_images: int
    batch_sizes: tuple[int, ...]
    #: Whether torch.compile is timed, at one batch size only (a compilation takes minutes).
    compile: bool
    compile_batch: int
    #: Timed calls per case at most, and the seconds after which a case stops adding calls.
    repeat: int
    case_budget_s: float
    #: What a case's first call is expected to take before anything of its precision was
    #: timed, and a first compilation.
    first_call_estimate_s: float
    compile_estimate_s: float
    #: Images submitted at once to the GPU loop whose batch must be split.
    oom_images: int
    #: The worker's settings in the out-of-memory and end-to-end parts.
    worker_precision: str
    worker_batch: int
    #: Side of the end-to-end part's square PNG inputs, and how many jobs it submits.
    e2e_image_side: int
    e2e_jobs: int


FULL: Final = Sizes(
    model="random:toonout",
    resolution=1024,
    precision_images=4,
    batch_sizes=(1, 2, 4, 8, 16, 32),
    compile=True,
    compile_batch=8,
    repeat=5,
    case_budget_s=3.0,
    first_call_estimate_s=10.0,
    # Inductor compiles ToonOut's Swin-L in minutes, not seconds; a first compilation is not
    # started with less than this left.
    compile_estimate_s=180.0,
    oom_images=16,
    # The worker's defaults on a GPU: fp16 (TOONQ_PRECISION=auto), batches of 8.
    worker_precision="fp16",
    worker_batch=8,
    e2e_image_side=1024,
    e2e_jobs=200,
)

QUICK: Final = Sizes(
    model="random:tiny",
    resolution=32,
    precision_images=2,
    batch_sizes=(1, 2),
    # Compiling even the tiny model for a CPU takes minutes.
    compile=False,
    compile_batch=2,
    repeat=1,
    case_budget_s=0.5,
    first_call_estimate_s=1.0,
    compile_estimate_s=60.0,
    oom_images=4,
    # Half precision has no fast CPU kernels.
    worker_precision="fp32",
    worker_batch=2,
    e2e_image_side=128,
    e2e_jobs=16,
)
