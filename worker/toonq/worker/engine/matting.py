"""The matting engine: image bytes in, RGBA cut-out (or mask) bytes out.

    prepare (one image):  decode -> composite onto the background colour -> resize + normalise
    batch (images of one input shape):  BiRefNet -> each image's logits
    finish (one image):  alpha (sigmoid + resize back) -> (capped at the input's alpha)
                         -> (refine_foreground) -> attach alpha to the ORIGINAL colours -> encode

An animation (`decode_animation`) takes the same path frame by frame: each frame is prepared and
batched like an image, its alpha kept (`alpha`), and `finish_animation` steadies the alphas
across frames, attaches them and writes the animated file. Sticker finishing and platform
presets (`engine.stickers`) end both paths.

On a GPU everything from the composite to the alpha matte runs there. The host keeps the decoded
pixels: the cut-out is those pixels with their alpha channel replaced, so only the matte comes
back from the device and the colours are not copied again to be interleaved with it.

The engine knows nothing of queues: the worker, `toonq matte`, `toonq eval` and the benchmarks
all take this one path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from toonq.shared.choices import COMPILE_MODES, resolution_problem
from toonq.shared.job import JobParams
from toonq.shared.logging import get_logger
from toonq.shared.settings import DEFAULT_BG_COLOR, DEFAULT_RESOLUTION
from toonq.worker.engine.animation import Animation, count_frames, decode_animation
from toonq.worker.engine.compositing import _swap_bg_to_gray, composite_rgb
from toonq.worker.engine.decode import decode_image, decode_pixels, image_size, image_to_array
from toonq.worker.engine.device import configure_numerics, resolve_device, resolve_dtype
from toonq.worker.engine.encode import (
    CONTENT_TYPES,
    encode_mask,
    encode_rgba,
    encode_rgba_pixels,
)
from toonq.worker.engine.frame_headers import may_be_animated
from toonq.worker.engine.presets import FittedOutput
from toonq.worker.engine.refine import refine_foreground
from toonq.worker.engine.stickers import FrameTiming, compose, needs_composition
from toonq.worker.engine.temporal import stabilise_alpha
from toonq.worker.engine.transforms import logits_to_alpha, to_model_input
from toonq.worker.engine.weights import LoadedModel

log = get_logger(__name__)


@dataclass
class MatteResult:
    data: bytes
    content_type: str
    #: The file name's extension for `data`: the job's format, or `webm` for a preset's video.
    extension: str
    width: int
    height: int
    #: Milliseconds per stage: decode, preprocess, inference, postprocess, encode.
    timings_ms: dict[str, float] = field(default_factory=dict)
    frames: int = 1
    #: What fitting the output to its preset changed (the size, the frames, the palette...).
    changes: tuple[str, ...] = ()


#: Host bytes per pixel a job holds at its peak besides its compressed input, without and with
#: refine_foreground. Measured (VmHWM) on 4000×4000 PNGs and JPEGs, and what the code holds:
#: * decode: Pillow's image, its RGBA conversion and the H×W×4 array (4 + 4 + 4); libpng: 4, or
#:   7 for RGB (its H×W×3, then H×W×4). The array (4) is then kept until the job is encoded.
#: * prepare on the CPU: the array, the composite's Pillow RGB image (4), its bytes and its
#:   H×W×3 array (3 + 3): 14; then the resize's float32 channel (4) over the array and the RGB.
#: * finish: the array, the float32 mask at full size (4), the alpha (1), the encoded output
#:   (up to about 4 for noise): 13. On the CPU, refine_foreground's float32 planes and box sums
#:   come to 216. On a GPU the composite, the resize, the mask and refine_foreground live on the
#:   device: the host holds the decode's 12 at most, 16 with refine (its uint8 colours, 3, and
#:   their interleaving with the alpha, 4, over finish's 9).
#: On the CPU, 16 rather than prepare's 14: with three 4000×4000 jobs under a 1280 MiB cgroup,
#: the heap the jobs share (malloc keeps freed memory, see `allocator`) now and then rose about
#: 150 MB above the sum of their own peaks, 15.5 bytes a pixel each, and the worker was killed.
_HOST_BYTES_PER_PIXEL: Final = {"cpu": 16, "gpu": 12}
_HOST_BYTES_PER_PIXEL_REFINED: Final = {"cpu": 216, "gpu": 16}
#: Besides one frame's peak: every frame of an animation stays in host memory until the file is
#: written, with its alpha (4 + 1), the finished copy (4) and the encoder's (4).
_HOST_BYTES_PER_ANIMATION_PIXEL: Final = 13


def batch_bucket(count: int) -> int:
    """The padded size a batch of `count` runs at when the model is compiled: the next power
    of two, so that a worker batching up to N images compiles about log2(N) graphs."""
    if count < 1:
        raise ValueError(f"a batch holds at least one image, got {count}")
    return 1 << (count - 1).bit_length()


@dataclass(frozen=True)
class StackedBatch:
    """A batch as the model takes it; the first `count` rows are real images."""

    tensor: torch.Tensor
    count: int


@dataclass
class DecodedImage:
    """One image as `finish` needs it once its alpha matte is known."""

    #: The decoded image, uint8 H×W×4 in host memory. `finish` writes the alpha matte into its
    #: fourth channel, whose input alpha served only to composite the model input (and to cap
    #: the matte, with `respect_input_alpha`, just before).
    pixels: npt.NDArray[np.uint8]
    #: The same pixels as uint8 4×H×W on the engine's device (a view of `pixels` on the CPU).
    image: torch.Tensor
    options: JobParams
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(kw_only=True)
class PreparedImage(DecodedImage):
    """One image ready for the model: what `finish` needs after inference."""

    #: 1×3×h×w in the engine's dtype, composited, resized and normalised.
    model_input: torch.Tensor


class _Stopwatch:
    """Per-stage wall times; on a GPU each stage ends with a sync so its kernels count."""

    def __init__(self, device: torch.device, ms: dict[str, float] | None = None) -> None:
        self._device = device
        self.ms: dict[str, float] = dict(ms or {})

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000


@dataclass(frozen=True)
class RemoteModel:
    """The identity of a model that another process runs: an engine made with it decodes,
    prepares (unless the model's process does) and finishes images on the CPU (a job process's),
    in the precision the model takes."""

    name: str
    revision: str | None


def _runs_elsewhere(batch: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("this engine's model runs in another process (RemoteModel)")


class MattingEngine:
    """A loaded model on its device, ready to matte images.

    Thread-safe for inference: jobs running in worker threads share the model.
    """

    def __init__(
        self,
        loaded: LoadedModel | RemoteModel,
        *,
        device: str = "auto",
        precision: str = "auto",
        resolution: int = DEFAULT_RESOLUTION,
        max_image_pixels: int = 50_000_000,
        max_frames: int = 300,
        max_animation_s: float = 60.0,
        png_compress_level: int = 1,
        compile_mode: str = "off",
        channels_last: bool = False,
    ) -> None:
        if problem := resolution_problem(resolution):
            raise ValueError(f"resolution {problem}")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        configure_numerics(self.dtype)
        self.channels_last = channels_last
        self._eager: Callable[[torch.Tensor], torch.Tensor] = _runs_elsewhere
        if isinstance(loaded, LoadedModel):
            model = loaded.model.to(device=self.device, dtype=self.dtype).eval()
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._eager = model
        self.compiled = compile_mode != "off" and isinstance(loaded, LoadedModel)
        # Compiled graphs (and the CUDA graphs of "reduce-overhead") are specialised to shapes:
        # only batches at the engine's resolution, padded to a few fixed sizes, each compiled
        # during the warm-up, reach them (`_runs_compiled`). Static (dynamic=False): a new shape
        # is a graph of its own, never a recompile of all of them into a dynamic one.
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = (
            torch.compile(
                self._eager,
                mode=None if compile_mode == "default" else compile_mode,
                dynamic=False,
            )
            if self.compiled
            else None
        )
        self._compiled_shapes: set[tuple[int, ...]] = set()
        self.model_name = loaded.name
        self.model_revision = loaded.revision
        self.resolution = resolution
        self.max_image_pixels = max_image_pixels
        self.max_frames = max_frames
        self.max_animation_s = max_animation_s
        self.png_compress_level = png_compress_level

    def host_bytes(self, data: bytes, options: JobParams) -> tuple[int, str]:
        """The host memory `prepare` and `finish` will hold for `data` at their peak, from its
        header, and what it is (`a 4000x3000 image`); the decoder's typed errors for a header it
        refuses."""
        width, height = image_size(data, max_pixels=self.max_image_pixels)
        table = (
            _HOST_BYTES_PER_PIXEL_REFINED if options.refine_foreground else _HOST_BYTES_PER_PIXEL
        )
        per_pixel = table["cpu" if self.device.type == "cpu" else "gpu"]
        frames = (
            count_frames(data, max_pixels=self.max_image_pixels) if may_be_animated(data) else 1
        )
        if frames == 1:
            return width * height * per_pixel, f"a {width}x{height} image"
        need = width * height * (per_pixel + frames * _HOST_BYTES_PER_ANIMATION_PIXEL)
        return need, f"a {width}x{height} animation of {frames} frames"

    def decode(self, data: bytes) -> Image.Image:
        return decode_image(data, max_pixels=self.max_image_pixels)

    def decode_animation(self, data: bytes) -> Animation | None:
        """Every frame of an animated GIF, APNG or WebP, as the viewer sees it; None for a still
        (which `prepare` decodes)."""
        return decode_animation(
            data,
            max_pixels=self.max_image_pixels,
            max_frames=self.max_frames,
            max_duration_s=self.max_animation_s,
        )

    # The one path through the engine: `prepare` one image, run the prepared inputs of one shape
    # through the model as a batch, `finish` each image. A pipelined worker runs `prepare` and
    # `finish` in many threads at once and the batch step in one GPU loop, which stacks the
    # next batch (`stack_batch`) while the model runs the current one (`run_batch`); a caller
    # that runs one batch at a time calls `infer`.

    def decode_input(
        self, source: bytes | Image.Image | npt.NDArray[np.uint8], options: JobParams
    ) -> DecodedImage:
        """The pixels of one image (decoded when given bytes), on the host: what a job process
        sends a model process that prepares images on its device, and what `finish` works on.
        An array (an animation's frame, uint8 H×W×4) is used in place: `finish` writes its
        alpha."""
        watch = _Stopwatch(self.device)
        if isinstance(source, np.ndarray):
            pixels = source
        else:
            with watch.stage("decode"):
                if isinstance(source, bytes):
                    pixels = decode_pixels(source, max_pixels=self.max_image_pixels)
                else:
                    pixels = image_to_array(source)
        return DecodedImage(pixels, torch.from_numpy(pixels).permute(2, 0, 1), options, watch.ms)

    def prepare(
        self, source: bytes | Image.Image | npt.NDArray[np.uint8], options: JobParams
    ) -> PreparedImage:
        """Decode (`decode_input`), move to the device, composite onto the job's background
        colour, resize and normalise: everything before the model, for one image."""
        decoded = self.decode_input(source, options)
        watch = _Stopwatch(self.device, decoded.timings_ms)
        with watch.stage("preprocess"), torch.inference_mode():
            if self.device.type == "cpu":
                image = decoded.image
                # Pillow composites in one pass of C, several times cheaper than torch.
                flat = torch.from_numpy(composite_rgb(decoded.pixels, options.bg_rgb))
                flat = flat.permute(2, 0, 1).unsqueeze(0)
            else:
                image = self._upload(decoded.image)
                flat = _swap_bg_to_gray(image.unsqueeze(0), options.bg_rgb)
            model_input = to_model_input(flat, options.resolution, self.dtype)
        return PreparedImage(decoded.pixels, image, options, watch.ms, model_input=model_input)

    def infer(self, batch: Sequence[PreparedImage]) -> list[torch.Tensor]:
        """Run prepared images of one input shape through the model as a single batch; returns
        each image's mask logits (1×1×h×w, on the device) and adds its share of the model time
        to its timings."""
        watch = _Stopwatch(self.device)
        with watch.stage("inference"):
            logits = self.run_batch(self.stack_batch([item.model_input for item in batch]))
        for item in batch:
            item.timings_ms["inference"] = watch.ms["inference"] / len(batch)
        return logits

    def stack_batch(self, inputs: Sequence[torch.Tensor]) -> StackedBatch:
        """The model's input tensor for prepared inputs of one shape (padded when compiled)."""
        count = len(inputs)
        parts = list(inputs)
        if self._runs_compiled(parts[0]) and batch_bucket(count) > count:
            first = parts[0]
            parts.append(first.new_zeros((batch_bucket(count) - count, *first.shape[1:])))
        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        # Inputs a job process prepared arrive in host memory.
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return StackedBatch(batch, count)

    def run_batch(self, stacked: StackedBatch) -> list[torch.Tensor]:
        """Each image's mask logits for a stacked batch."""
        model = self._eager
        if self._compiled is not None and self._runs_compiled(stacked.tensor):
            model = self._compiled
            self._compiled_shapes.add(tuple(stacked.tensor.shape))
        with torch.inference_mode():
            return list(torch.split(model(stacked.tensor)[: stacked.count], 1))

    @property
    def compiled_shapes(self) -> frozenset[tuple[int, ...]]:
        """The input shapes the compiled model has run (each one a graph it compiled): those of
        the warm-up, and no more however many resolutions the jobs ask for."""
        return frozenset(self._compiled_shapes)

    def _runs_compiled(self, batch: torch.Tensor) -> bool:
        """Whether `batch` goes through the compiled model: only at the engine's resolution. A
        job at another one runs the eager model, so that a rare resolution never compiles a graph
        in the GPU loop (minutes without a heartbeat, and memory the batch limit would pay for)."""
        return self.compiled and tuple(batch.shape[-2:]) == (self.resolution, self.resolution)

    def alpha(self, prepared: DecodedImage, logits: torch.Tensor) -> torch.Tensor:
        """The image's alpha matte: uint8 H×W at its original size, on the engine's device."""
        image = prepared.image
        with torch.inference_mode():
            return logits_to_alpha(logits, (image.shape[-2], image.shape[-1]))

    def finish(self, prepared: DecodedImage, logits: torch.Tensor) -> MatteResult:
        """Everything after the model, for one image: the alpha at the original size, the
        cut-out's colours and the encoded output."""
        watch = _Stopwatch(self.device, prepared.timings_ms)
        with watch.stage("postprocess"):
            alpha = self.alpha(prepared, logits)
        return self._finish(prepared, alpha, watch)

    def finish_alpha(self, prepared: DecodedImage, alpha: torch.Tensor) -> MatteResult:
        """`finish` from the image's alpha matte (uint8 H×W at its original size, on the
        engine's device), as a model process that prepares images returns it. `alpha` is
        written to."""
        return self._finish(prepared, alpha, _Stopwatch(self.device, prepared.timings_ms))

    def _finish(
        self, prepared: DecodedImage, alpha: torch.Tensor, watch: _Stopwatch
    ) -> MatteResult:
        image, options = prepared.image, prepared.options
        with torch.inference_mode():
            with watch.stage("postprocess"):
                if options.respect_input_alpha:
                    # The model sees the input composited onto a colour, so it may find a subject
                    # where the input is transparent: the input's own alpha bounds the output's.
                    torch.minimum(alpha, image[3], out=alpha)
                refined = refine_foreground(image[:3], alpha) if options.refine_foreground else None
            if needs_composition(options):
                with watch.stage("encode"):
                    if refined is not None:
                        prepared.pixels[..., :3] = _host(refined)
                    prepared.pixels[..., 3] = alpha.cpu().numpy()
                    fitted = self._compose([prepared.pixels], None, options)
                return _result(fitted, watch.ms)
            with watch.stage("encode"):
                data = self._encode(prepared, alpha, refined)
        return MatteResult(
            data=data,
            content_type=CONTENT_TYPES[options.format],
            extension=options.format,
            width=image.shape[-1],
            height=image.shape[-2],
            timings_ms=watch.ms,
        )

    def finish_animation(
        self,
        animation: Animation,
        alphas: list[npt.NDArray[np.uint8]],
        options: JobParams,
        timings_ms: dict[str, float],
    ) -> MatteResult:
        """The animated output of `animation`'s frames with their alpha mattes (uint8 H×W, one
        per frame, from `alpha`): steadied across frames (`temporal_smoothing`), capped at the
        input's alpha, refined, attached to each frame's colours, finished and written with
        the frames' timing kept."""
        watch = _Stopwatch(self.device)
        frames = animation.frames
        with torch.inference_mode(), watch.stage("postprocess"):
            if options.temporal_smoothing:
                # Before the frames' alphas are overwritten: the run detection reads the input.
                alphas = stabilise_alpha(frames, alphas)
            for frame, alpha in zip(frames, alphas, strict=True):
                if options.respect_input_alpha:
                    np.minimum(alpha, frame[..., 3], out=alpha)
                if options.mask_only:
                    frame[..., :3] = alpha[..., np.newaxis]
                    frame[..., 3] = 255
                    continue
                if options.refine_foreground:
                    colours = torch.from_numpy(frame).permute(2, 0, 1)[:3].to(self.device)
                    matte = torch.from_numpy(alpha).to(self.device)
                    frame[..., :3] = _host(refine_foreground(colours, matte))
                frame[..., 3] = alpha
        timing = FrameTiming(animation.durations_ms, animation.loop)
        with watch.stage("encode"):
            fitted = self._compose(frames, timing, options)
        return _result(fitted, timings_ms | watch.ms)

    def _compose(
        self, frames: list[npt.NDArray[np.uint8]], timing: FrameTiming | None, options: JobParams
    ) -> FittedOutput:
        return compose(frames, timing, options, png_compress_level=self.png_compress_level)

    def warmup(self, batch_size: int = 1) -> None:
        """Real inferences at the largest batch the worker will run, so that the first jobs pay
        no allocation, autotuning or compilation cost."""
        start = time.perf_counter()
        sample = Image.new("RGBA", (self.resolution, self.resolution), (200, 120, 60, 255))
        options = JobParams(bg_color=DEFAULT_BG_COLOR, format="png", resolution=self.resolution)
        prepared = self.prepare(sample, options)
        sizes = {batch_bucket(n) for n in range(1, batch_size + 1)} if self.compiled else {1}
        for size in sorted(sizes | {batch_size}):
            for logits in self.infer([prepared] * size):
                self.finish(prepared, logits)
        log.info(
            "engine_warm",
            model=self.model_name,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            resolution=self.resolution,
            batch_size=batch_size,
            ms=round((time.perf_counter() - start) * 1000, 1),
        )

    def _upload(self, host: torch.Tensor) -> torch.Tensor:
        """`host` on the engine's GPU. Straight from pageable memory: a pinned copy would be one
        more full-size host copy per job, which the pinned-memory cache keeps for reuse."""
        return host.to(self.device)

    def _encode(
        self, prepared: DecodedImage, alpha_matte: torch.Tensor, refined: torch.Tensor | None
    ) -> bytes:
        """The output: the mask alone, or the cut-out's colours with the alpha matte. The
        colours are the original RGB (never the grey composite), or their blur-fusion
        foreground estimate (`refined`) when asked for."""
        options, level = prepared.options, self.png_compress_level
        alpha = alpha_matte.cpu().numpy()
        if options.mask_only:
            return encode_mask(alpha, fmt=options.format, png_compress_level=level)
        if refined is not None:
            return encode_rgba(refined, alpha, fmt=options.format, png_compress_level=level)
        prepared.pixels[..., 3] = alpha
        return encode_rgba_pixels(prepared.pixels, fmt=options.format, png_compress_level=level)


def _result(fitted: FittedOutput, timings_ms: dict[str, float]) -> MatteResult:
    return MatteResult(
        data=fitted.data,
        content_type=fitted.content_type,
        extension=fitted.extension,
        width=fitted.width,
        height=fitted.height,
        timings_ms=timings_ms,
        frames=fitted.frames,
        changes=fitted.changes,
    )


def _host(channels: torch.Tensor) -> npt.NDArray[np.uint8]:
    """3×H×W channels (on any device) as a host H×W×3 view, to write into interleaved pixels."""
    return channels.cpu().numpy().transpose(1, 2, 0)
