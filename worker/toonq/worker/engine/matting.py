"""The matting engine: image bytes in, RGBA cut-out (or mask) bytes out.

    decode -> _swap_bg_to_gray -> resize + normalise -> BiRefNet -> sigmoid + resize back
           -> (refine_foreground) -> attach alpha to the ORIGINAL colours -> encode

The engine knows nothing of queues: the worker, `toonq matte` and the benchmarks all call it.
Images are batched through the model; decoding and encoding stay per image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from PIL import Image

from toonq.shared.logging import get_logger
from toonq.shared.models import OutputFormat
from toonq.worker.engine.compositing import _swap_bg_to_gray
from toonq.worker.engine.decode import decode_image, image_to_array
from toonq.worker.engine.device import configure_numerics, resolve_device, resolve_dtype
from toonq.worker.engine.encode import CONTENT_TYPES, encode_mask, encode_rgba
from toonq.worker.engine.refine import refine_foreground
from toonq.worker.engine.transforms import logits_to_alpha, to_model_input
from toonq.worker.engine.weights import LoadedModel

log = get_logger(__name__)

GRAY = (128, 128, 128)


@dataclass(frozen=True)
class MatteOptions:
    """What one job asks for."""

    bg_color: tuple[int, int, int] = GRAY
    output_format: OutputFormat = "png"
    mask_only: bool = False
    refine_foreground: bool = False
    #: Model input size (a multiple of 32); None means the engine's default.
    resolution: int | None = None

    @property
    def content_type(self) -> str:
        return "image/png" if self.mask_only else CONTENT_TYPES[self.output_format]


@dataclass
class MatteResult:
    data: bytes
    content_type: str
    width: int
    height: int
    #: Milliseconds per stage: decode, preprocess, inference, postprocess, encode.
    timings_ms: dict[str, float] = field(default_factory=dict)


class _Stopwatch:
    """Per-stage wall times; on a GPU each stage ends with a sync so its kernels count."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000


class MattingEngine:
    """A loaded model on its device, ready to matte images.

    Thread-safe for inference: jobs running in worker threads share the model.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        device: str = "auto",
        precision: str = "auto",
        resolution: int = 1024,
        max_image_pixels: int = 50_000_000,
        png_compress_level: int = 1,
    ) -> None:
        if resolution % 32:
            raise ValueError(f"resolution must be a multiple of 32, got {resolution}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        configure_numerics(self.dtype)
        self.model: torch.nn.Module = loaded.model.to(device=self.device, dtype=self.dtype)
        self.model.eval()
        self.model_name = loaded.name
        self.model_revision = loaded.revision
        self.resolution = resolution
        self.max_image_pixels = max_image_pixels
        self.png_compress_level = png_compress_level

    def decode(self, data: bytes) -> Image.Image:
        return decode_image(data, max_pixels=self.max_image_pixels)

    def predict_alphas(
        self,
        images: Sequence[torch.Tensor],
        bg_colors: Sequence[tuple[int, int, int]],
        resolution: int | None = None,
    ) -> list[torch.Tensor]:
        """Alpha mattes (uint8 H×W, on the engine's device) for a batch of uint8 4×H×W RGBA
        images of any sizes, each composited onto its own background colour first."""
        size = resolution or self.resolution  # to_model_input checks it
        with torch.inference_mode():
            batch = torch.cat(
                [
                    to_model_input(_swap_bg_to_gray(image.unsqueeze(0), color), size, self.dtype)
                    for image, color in zip(images, bg_colors, strict=True)
                ]
            )
            logits = self.model(batch)
            return [
                logits_to_alpha(logit, (image.shape[-2], image.shape[-1]))
                for logit, image in zip(logits, images, strict=True)
            ]

    def matte_images(
        self, images: Sequence[Image.Image], options: Sequence[MatteOptions]
    ) -> list[MatteResult]:
        """Matte decoded RGBA images in one batch through the model; the options may differ
        per image except in resolution, which a batch shares."""
        resolutions = {o.resolution for o in options}
        if len(resolutions) != 1:
            raise ValueError(
                f"one batch runs at one resolution, got {sorted(map(str, resolutions))}"
            )
        watch = _Stopwatch(self.device)
        with watch.stage("preprocess"):
            tensors = [self.to_tensor(image) for image in images]
        with watch.stage("inference"):
            alphas = self.predict_alphas(tensors, [o.bg_color for o in options], resolutions.pop())
        results = []
        for image, alpha, opts in zip(tensors, alphas, options, strict=True):
            item = _Stopwatch(self.device)
            with item.stage("postprocess"):
                rgb = self._foreground(image, alpha, opts)
            with item.stage("encode"):
                data = self._encode(rgb, alpha, opts)
            shared = {k: v / len(images) for k, v in watch.ms.items()}
            results.append(
                MatteResult(
                    data=data,
                    content_type=opts.content_type,
                    width=image.shape[-1],
                    height=image.shape[-2],
                    timings_ms=shared | item.ms,
                )
            )
        return results

    def matte(self, data: bytes, options: MatteOptions) -> MatteResult:
        """Decode, matte and encode one image."""
        start = time.perf_counter()
        image = self.decode(data)
        decode_ms = (time.perf_counter() - start) * 1000
        (result,) = self.matte_images([image], [options])
        result.timings_ms = {"decode": decode_ms, **result.timings_ms}
        return result

    def warmup(self) -> None:
        """One real inference, so that the first job pays no allocation or autotuning cost."""
        start = time.perf_counter()
        sample = Image.new("RGBA", (self.resolution, self.resolution), (200, 120, 60, 255))
        self.matte_images([sample], [MatteOptions()])
        log.info(
            "engine_warm",
            model=self.model_name,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            resolution=self.resolution,
            ms=round((time.perf_counter() - start) * 1000, 1),
        )

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        return (
            torch.from_numpy(image_to_array(image))
            .permute(2, 0, 1)
            .to(self.device, non_blocking=True)
        )

    def _foreground(
        self, image: torch.Tensor, alpha: torch.Tensor, options: MatteOptions
    ) -> torch.Tensor:
        """The cut-out's colours: the original RGB (never the gray composite), or its
        blur-fusion foreground estimate when asked for."""
        if options.refine_foreground and not options.mask_only:
            return refine_foreground(image[:3], alpha)
        return image[:3]

    def _encode(self, rgb: torch.Tensor, alpha: torch.Tensor, options: MatteOptions) -> bytes:
        alpha_np = alpha.cpu().numpy()
        if options.mask_only:
            return encode_mask(alpha_np, png_compress_level=self.png_compress_level)
        return encode_rgba(
            rgb.cpu().numpy(),
            alpha_np,
            fmt=options.output_format,
            png_compress_level=self.png_compress_level,
        )
