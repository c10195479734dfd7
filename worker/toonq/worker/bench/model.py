"""Item 1: model throughput, in images per second, by precision x torch.compile x batch size.

The forward pass alone, on random input at the model resolution: what the GPU sustains once
decoding and encoding keep up. On a GPU the default is ToonOut's architecture (Swin-L) at 1024;
on a CPU, the `tiny` preset, eager, in fp32, since ToonOut would take minutes per image there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Final

import torch

from toonq.worker.bench.report import BenchOptions, Section, markdown_table
from toonq.worker.bench.timing import time_call
from toonq.worker.engine.device import configure_numerics, resolve_device, resolve_dtype
from toonq.worker.engine.weights import load_model

#: Random weights cost exactly what real ones of the same architecture do, with no download.
GPU_MODEL: Final = "random:toonout"
CPU_MODEL: Final = "random:tiny"
RESOLUTION: Final = 1024
QUICK_RESOLUTION: Final = 128
GPU_PRECISIONS: Final = ("fp16", "bf16", "fp32")
GPU_BATCH_SIZES: Final = (1, 2, 4, 8, 16)
CPU_BATCH_SIZES: Final = (1, 2)
OUT_OF_MEMORY: Final = "out of memory"
CPU_HALF_PRECISION_NOTE: Final = (
    "CPU run: fp32 only. Half precision has no fast CPU kernels and runs about 50x slower "
    "than fp32 there, so it is timed only when asked for (--precisions)."
)
CPU_COMPILE_NOTE: Final = (
    "CPU run: eager only. Compiling BiRefNet for the CPU (C++ code generation) takes longer "
    "than the rest of the benchmark, so torch.compile is timed only when asked for (--compile)."
)


@dataclass(frozen=True)
class ModelRow:
    precision: str
    compiled: bool
    batch_size: int
    images_per_s: float | None = None
    ms_per_image: float | None = None
    #: images_per_s relative to the first row of the run (eager, batch 1, first precision).
    relative: float | None = None
    #: The warm-up call, which includes compilation when compiled.
    first_call_s: float | None = None
    peak_memory_gib: float | None = None
    error: str | None = None


def run(options: BenchOptions) -> Section:
    device = resolve_device(options.device)
    on_gpu = device.type == "cuda"
    spec = options.model or (GPU_MODEL if on_gpu else CPU_MODEL)
    resolution = options.resolution or (QUICK_RESOLUTION if options.quick else RESOLUTION)
    precisions = options.precisions or (GPU_PRECISIONS if on_gpu else ("fp32",))
    batch_sizes = options.batch_sizes or (
        (1,) if options.quick else GPU_BATCH_SIZES if on_gpu else CPU_BATCH_SIZES
    )
    compiles = options.compile or ((False, True) if on_gpu and not options.quick else (False,))
    repeat = 1 if options.quick else options.repeat

    master = load_model(spec).model
    rows: list[ModelRow] = []
    for precision in precisions:
        dtype = resolve_dtype(precision, device)
        configure_numerics(dtype)  # what the engine runs: fp32 means IEEE fp32, no TF32
        model = copy.deepcopy(master).to(device=device, dtype=dtype).eval()
        for compiled in compiles:
            forward = _compiled(model) if compiled else model
            for batch in batch_sizes:
                row = _measure(forward, precision, compiled, batch, resolution, device, repeat)
                rows.append(row)
                if row.error == OUT_OF_MEMORY:
                    break  # larger batches would not fit either
        del model
        if on_gpu:
            torch.cuda.empty_cache()
    rows = _relative_to_first(rows)

    notes = [f"Model `{spec}` at {resolution}x{resolution} on {device}."]
    if not on_gpu and not options.precisions:
        notes.append(CPU_HALF_PRECISION_NOTE)
    if not on_gpu and not options.compile:
        notes.append(CPU_COMPILE_NOTE)
    data: dict[str, Any] = {
        "device": str(device),
        "model": spec,
        "resolution": resolution,
        "repeat": repeat,
        "notes": notes,
        "rows": [asdict(row) for row in rows],
    }
    return Section("model", "Model throughput", data, _markdown(rows, notes))


def _compiled(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A static-shape compilation per batch size, as a worker with a fixed batch would run.

    Dynamo's cache is shared by every instance of the model class: resetting it keeps the
    earlier precisions' graphs from filling it, past which Dynamo silently runs eager.
    """
    torch._dynamo.reset()
    compiled: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model, dynamic=False)
    return compiled


def _measure(
    forward: Callable[[torch.Tensor], torch.Tensor],
    precision: str,
    compiled: bool,
    batch: int,
    resolution: int,
    device: torch.device,
    repeat: int,
) -> ModelRow:
    row = ModelRow(precision, compiled, batch)
    dtype = resolve_dtype(precision, device)
    x = torch.randn(batch, 3, resolution, resolution, device=device, dtype=dtype)
    try:
        with _peak_memory(device) as peak, torch.inference_mode():
            timing = time_call(lambda: forward(x), repeat=repeat, device=device)
    except torch.cuda.OutOfMemoryError:
        return _replace(row, error=OUT_OF_MEMORY)
    except Exception as exc:  # a compiler or backend failure is a result to report, not a crash
        if not compiled:
            raise
        return _replace(row, error=f"{type(exc).__name__}: {_summary(exc)}")
    return _replace(
        row,
        images_per_s=round(batch * 1000 / timing.median_ms, 3),
        ms_per_image=round(timing.median_ms / batch, 3),
        first_call_s=round(timing.first_ms / 1000, 3),
        peak_memory_gib=peak(),
    )


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[Callable[[], float | None]]:
    """Yields a function that gives the peak GPU memory (GiB) in the block; None on a CPU."""
    if device.type != "cuda":
        yield lambda: None
        return
    torch.cuda.reset_peak_memory_stats(device)
    yield lambda: round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _relative_to_first(rows: Sequence[ModelRow]) -> list[ModelRow]:
    baseline = next((row.images_per_s for row in rows if row.images_per_s), None)
    return [
        _replace(row, relative=round(row.images_per_s / baseline, 3))
        if row.images_per_s and baseline
        else row
        for row in rows
    ]


def _markdown(rows: Sequence[ModelRow], notes: Sequence[str]) -> str:
    table = markdown_table(
        ["precision", "compile", "batch", "images/s", "ms/image", "relative", "first call s",
         "peak GiB", "error"],
        [
            (r.precision, "on" if r.compiled else "off", r.batch_size, r.images_per_s,
             r.ms_per_image, r.relative, r.first_call_s, r.peak_memory_gib, r.error)
            for r in rows
        ],
    )  # fmt: skip
    return "\n\n".join([*notes, table])


def _replace(row: ModelRow, **changes: Any) -> ModelRow:
    return ModelRow(**(asdict(row) | changes))


def _summary(exc: Exception) -> str:
    """The exception's first paragraph on one line: compiler errors append pages of advice."""
    paragraph = str(exc).strip().split("\n\n")[0]
    return " ".join(paragraph.split())[:300]
