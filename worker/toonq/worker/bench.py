"""Benchmarks of the engine: codecs, pre/post-processing, and the model per precision and batch.

Every figure is the median of `repeat` timed runs after one warm-up run. On a CPU, compare the
ratios within one run; absolute times mean something only on a GPU, reported with its name.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from toonq.worker.engine.compositing import _swap_bg_to_gray
from toonq.worker.engine.decode import decode_image
from toonq.worker.engine.device import resolve_dtype
from toonq.worker.engine.encode import encode_mask, encode_rgba
from toonq.worker.engine.matting import GRAY, MatteOptions, MattingEngine
from toonq.worker.engine.refine import refine_foreground
from toonq.worker.engine.transforms import logits_to_alpha, to_model_input
from toonq.worker.samples import anime_sample

Case = tuple[str, Callable[[], object], int]  # name, what to run, images it processes


@dataclass(frozen=True)
class Measurement:
    group: str
    name: str
    #: Median milliseconds per image.
    ms_per_image: float
    #: ms_per_image relative to the group's first (baseline) row.
    ratio: float

    @property
    def images_per_s(self) -> float:
        return 1000 / self.ms_per_image

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"images_per_s": round(self.images_per_s, 2)}


class Bench:
    """Collects `Measurement`s, one group of cases at a time."""

    def __init__(self, engine: MattingEngine, *, image_size: tuple[int, int], repeat: int) -> None:
        self.engine = engine
        self.repeat = repeat
        self.image = anime_sample(seed=7, size=image_size, transparent=True)
        self.results: list[Measurement] = []

    def codecs(self) -> None:
        png, jpeg = _encode(self.image, "PNG"), _encode(self.image.convert("RGB"), "JPEG")
        array = np.asarray(self.image)
        rgb, alpha = array[..., :3].transpose(2, 0, 1), array[..., 3]
        no_limit = 1 << 40
        self._group(
            "decode",
            [
                ("png", lambda: decode_image(png, max_pixels=no_limit), 1),
                ("jpeg", lambda: decode_image(jpeg, max_pixels=no_limit), 1),
            ],
        )

        def rgba(fmt: str, level: int) -> Callable[[], bytes]:
            return lambda: encode_rgba(rgb, alpha, fmt=fmt, png_compress_level=level)  # type: ignore[arg-type]

        self._group(
            "encode",
            [
                ("png level 6 (Pillow's default)", rgba("png", 6), 1),
                ("png level 1 (toonq's default)", rgba("png", 1), 1),
                ("webp lossless, method 0", rgba("webp", 1), 1),
                ("mask png level 1", lambda: encode_mask(alpha, png_compress_level=1), 1),
            ],
        )

    def processing(self) -> None:
        engine = self.engine
        rgba = engine.to_tensor(self.image).unsqueeze(0)
        size = (rgba.shape[-2], rgba.shape[-1])
        logits = torch.zeros(1, engine.resolution, engine.resolution, device=engine.device)
        alpha = logits_to_alpha(logits, size)
        self._group(
            "processing",
            [
                (
                    "composite + resize + normalise",
                    lambda: to_model_input(
                        _swap_bg_to_gray(rgba, GRAY), engine.resolution, engine.dtype
                    ),
                    1,
                ),
                ("sigmoid + resize back", lambda: logits_to_alpha(logits, size), 1),
                ("refine_foreground", lambda: refine_foreground(rgba[0, :3], alpha), 1),
            ],
        )

    def model(self, precisions: list[str], batch_sizes: list[int]) -> None:
        """The forward pass alone, per precision and batch size, on a copy of the model."""
        device, size = self.engine.device, self.engine.resolution
        measured = []
        for precision in precisions:
            dtype = resolve_dtype(precision, device)
            model = copy.deepcopy(self.engine.model).to(dtype=dtype)
            for batch in batch_sizes:
                x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
                with torch.inference_mode():
                    ms = self._time_ms(lambda: model(x))  # noqa: B023 (timed right here)
                measured.append((f"{precision} batch {batch}", ms / batch))
        self._record(f"model forward {size}x{size}", measured)

    def end_to_end(self, options: MatteOptions) -> dict[str, float]:
        """Per-stage milliseconds of `engine.matte` on one PNG."""
        data = _encode(self.image, "PNG")
        self.engine.matte(data, options)
        runs = [self.engine.matte(data, options).timings_ms for _ in range(self.repeat)]
        return {stage: round(statistics.median(r[stage] for r in runs), 2) for stage in runs[0]}

    def _group(self, group: str, cases: list[Case]) -> None:
        self._record(group, [(name, self._time_ms(fn) / images) for name, fn, images in cases])

    def _record(self, group: str, measured: list[tuple[str, float]]) -> None:
        baseline = measured[0][1]
        for name, per_image in measured:
            self.results.append(
                Measurement(group, name, round(per_image, 2), round(per_image / baseline, 3))
            )

    def _time_ms(self, fn: Callable[[], object]) -> float:
        fn()
        self._sync()
        samples = []
        for _ in range(self.repeat):
            start = time.perf_counter()
            fn()
            self._sync()
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)

    def _sync(self) -> None:
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()
