"""A real CUDA out-of-memory in the worker's GPU loop (`InferenceBatcher`): the batch is split
and retried, the lower batch limit is kept, and every image still gets its result.

The loop is handed more images at once than fit: the process's memory is capped (through
`torch.cuda.set_per_process_memory_fraction`) at what the model's weights, the inputs and
`_CAP_IMAGES` images' worth of activations take, measured on one image first. On a CPU there is
no cap and no out-of-memory: the loop runs the batch whole, which still checks the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import torch

from toonq.worker.batcher import InferenceBatcher
from toonq.worker.bench.gpu_check.context import CheckContext, describe_error
from toonq.worker.bench.report import Section, markdown_table
from toonq.worker.engine.matting import MattingEngine

NAME: Final = "oom"
TITLE: Final = "A CUDA out-of-memory split in the GPU loop"
#: Activations the capped memory holds, in images: batches of 2 fit, batches of 4 do not.
_CAP_IMAGES: Final = 3.5
#: How long the loop waits for a batch to fill; the images are all queued before it starts.
_MAX_WAIT_S: Final = 1.0
_RESULT_TIMEOUT_S: Final = 120.0


def run(ctx: CheckContext) -> Section:
    sizes = ctx.sizes
    engine = ctx.worker_engine()
    shape = (1, 3, sizes.resolution, sizes.resolution)
    inputs = [
        torch.randn(shape, device=engine.device, dtype=engine.dtype)
        for _ in range(sizes.oom_images)
    ]
    with _memory_capped(engine, inputs[0]) as cap_gib:
        data = _drive(engine, inputs)
    data |= {"status": "ran", "device": str(engine.device), "memory_cap_gib": cap_gib}
    data["ok"] = data["images_with_results"] == len(inputs) and (
        data["split"] or engine.device.type != "cuda"
    )
    summary = (
        f"{data['images_with_results']}/{len(inputs)} images got results; batch limit "
        f"{data['requested_batch']} -> {data['limit_after']}"
    )
    return Section(NAME, TITLE, data, _markdown(data), summary)


@contextmanager
def _memory_capped(engine: MattingEngine, sample: torch.Tensor) -> Iterator[float | None]:
    """Cap this process's device memory at what is allocated now (the weights and the
    inputs) plus `_CAP_IMAGES` times what one image's batch adds at its peak; yields the cap in
    GiB (None on a CPU), and lifts it on leaving."""
    device = engine.device
    if device.type != "cuda":
        yield None
        return
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    engine.run_batch(engine.stack_batch([sample]))
    torch.cuda.synchronize(device)
    per_image = torch.cuda.max_memory_allocated(device) - base
    cap = base + _CAP_IMAGES * per_image
    total = torch.cuda.get_device_properties(device).total_memory
    # Cached blocks count against the cap: start from none.
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        yield round(cap / 2**30, 2)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


def _drive(engine: MattingEngine, inputs: list[torch.Tensor]) -> dict[str, Any]:
    """All `inputs` through one GPU loop whose batch limit admits them all at once."""
    batcher: InferenceBatcher[Any] = InferenceBatcher(
        engine.stack_batch,
        engine.run_batch,
        max_batch_size=len(inputs),
        max_wait_s=_MAX_WAIT_S,
    )
    # Queued before the loop starts, so that its first batch holds them all.
    futures = [batcher.submit(model_input) for model_input in inputs]
    batcher.start()
    batch_sizes: list[int] = []
    errors: list[str] = []
    try:
        for future in futures:
            try:
                batch_sizes.append(future.result(timeout=_RESULT_TIMEOUT_S).batch_size)
            except Exception as exc:  # an image without a result is what this part reports
                errors.append(describe_error(exc))
    finally:
        batcher.stop(timeout=10)
    # Each image records the size of the batch it ran in: n images of size s are n/s batches.
    batches = {size: count // size for size, count in sorted(Counter(batch_sizes).items())}
    return {
        "requested_batch": len(inputs),
        "limit_after": batcher.batch_limit(inputs[0].shape),
        "split": batcher.batch_limit(inputs[0].shape) < len(inputs),
        "images_with_results": len(batch_sizes),
        "batches_run": {str(size): count for size, count in batches.items()},
        "errors": errors,
    }


def _markdown(data: dict[str, Any]) -> str:
    cap = data["memory_cap_gib"]
    note = (
        f"{data['requested_batch']} images handed to the GPU loop at once on {data['device']}, "
        + (f"with the process's memory capped at {cap} GiB." if cap else "with no memory cap.")
    )
    table = markdown_table(
        ["batch limit before", "after", "split", "batches run (size: count)",
         "images with results", "errors"],
        [(data["requested_batch"], data["limit_after"], data["split"],
          ", ".join(f"{size}: {count}" for size, count in data["batches_run"].items()),
          data["images_with_results"], "; ".join(data["errors"]))],
    )  # fmt: skip
    return f"{note}\n\n{table}"
