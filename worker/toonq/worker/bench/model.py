"""Item 1: model throughput, in images per second, by precision x torch.compile x batch size.

The engine's model step alone (`run_batch`, as the worker's GPU loop runs it), on random input
at the model resolution: what the GPU sustains once decoding and encoding keep up. On a GPU the
default is ToonOut's architecture (Swin-L) at 1024; on a CPU, the `tiny` preset, eager, in fp32,
since ToonOut would take minutes per image there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

import torch

from toonq.worker.bench.report import BenchOptions, Section, markdown_table
from toonq.worker.bench.timing import time_call
from toonq.worker.engine.device import resolve_device
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.weights import LoadedModel, load_model

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

    master = load_model(spec)
    rows: list[ModelRow] = []
    for precision in precisions:
        # The engine moves its model to the device and precision: each precision gets a copy.
        loaded = replace(master, model=copy.deepcopy(master.model))
        for compiled in compiles:
            for batch in batch_sizes:
                row = measure(
                    loaded, options.device, precision, compiled, batch, resolution, repeat
                )
                rows.append(row)
                if row.error == OUT_OF_MEMORY:
                    break  # larger batches would not fit either
        del loaded  # the model leaves the device before the next precision's copy
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


def _engine(
    loaded: LoadedModel, device: str, precision: str, resolution: int, *, compiled: bool
) -> MattingEngine:
    """An engine for one batch size: when compiled, a static-shape compilation of that size
    alone, as a worker with a fixed batch would run.

    Dynamo's cache is shared by every instance of the model class: resetting it keeps the
    earlier graphs from filling it (past which Dynamo silently runs eager) and keeps this size
    from recompiling them with a dynamic batch dimension.
    """
    if compiled:
        torch._dynamo.reset()
    return MattingEngine(
        loaded,
        device=device,
        precision=precision,
        resolution=resolution,
        compile_mode="default" if compiled else "off",
    )


def measure(
    loaded: LoadedModel,
    device: str,
    precision: str,
    compiled: bool,
    batch: int,
    resolution: int,
    repeat: int,
    *,
    budget_s: float | None = None,
) -> ModelRow:
    """One configuration: a warm-up call, then the median of `repeat` timed calls (fewer once
    they have taken `budget_s`). Running out of memory, or a compiler failure, is a row with
    its error."""
    row = ModelRow(precision, compiled, batch)
    engine = _engine(loaded, device, precision, resolution, compiled=compiled)
    size = (1, 3, engine.resolution, engine.resolution)
    try:
        inputs = [torch.randn(size, device=engine.device, dtype=engine.dtype) for _ in range(batch)]
        stacked = engine.stack_batch(inputs)
        del inputs  # only the stacked batch stays in memory, as in the GPU loop
        with _peak_memory(engine.device) as peak:
            timing = time_call(
                lambda: engine.run_batch(stacked),
                repeat=repeat,
                device=engine.device,
                budget_s=budget_s,
            )
    except torch.cuda.OutOfMemoryError:
        return _replace(row, error=OUT_OF_MEMORY)
    except Exception as exc:  # a compiler or backend failure is a result to report, not a crash
        if not compiled:
            raise
        return _replace(row, error=f"{type(exc).__name__}: {first_paragraph(exc)}")
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


def first_paragraph(exc: Exception) -> str:
    """The exception's first paragraph on one line: compiler errors append pages of advice."""
    paragraph = str(exc).strip().split("\n\n")[0]
    return " ".join(paragraph.split())[:300]
