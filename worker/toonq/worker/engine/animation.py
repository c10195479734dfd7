"""Decode an animated GIF, APNG or WebP into full frames, within the limits on animations.

Each frame is the whole canvas as a viewer shows it at that point: disposal, blending and
transparency applied, 8-bit RGBA, turned upright by the file's orientation like a still. The
opening checks are `decode.open_image`'s (formats, pixel limit, typed errors). The frame count,
the running time and the pixels of all frames together are then checked against their limits
from the headers (`frame_headers`), before any frame is decoded.

A truncated or corrupt animation keeps the frames before the first one that does not decode, as
a viewer shows them before it stops; the limits still count every frame the headers declare. An
animation whose first frame does not decode is an `InvalidImageError`.

Pillow composites GIF frames (binary transparency; disposal 2 restores the frame's rectangle to
the transparent colour, or to the background colour in a GIF without one, as GIF89a says) and
libwebp WebP frames (a clear pixel comes out (0, 0, 0, 0)). APNG frames are composited here:
Pillow's OP_OVER blends alpha like a colour channel, so that a semi-transparent pixel over an
opaque one would come out semi-transparent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image
from PIL.PngImagePlugin import Blend, Disposal

from toonq.shared.errors import ImageTooLargeError, InvalidImageError, TooManyFramesError
from toonq.worker.engine.decode import open_image, pixel_limit, to_rgba, upright_transpose
from toonq.worker.engine.frame_headers import FrameHeaders, may_be_animated, read_frame_headers


@dataclass
class Animation:
    """The frames of an animation and how it plays."""

    #: Each an H×W×4 uint8 RGBA array (C-contiguous, writable): the full canvas at that frame.
    frames: list[npt.NDArray[np.uint8]]
    #: How long each frame shows, in milliseconds, as stored.
    durations_ms: list[int]
    #: How many times the animation plays in all; 0 plays it forever.
    loop: int

    @property
    def width(self) -> int:
        return int(self.frames[0].shape[1])

    @property
    def height(self) -> int:
        return int(self.frames[0].shape[0])

    @property
    def total_ms(self) -> int:
        """The running time of one play."""
        return sum(self.durations_ms)


def count_frames(data: bytes, *, max_pixels: int) -> int:
    """The frames of `data`, from its headers: 1 for a still or a format without animation.
    Raises what `decode.image_size` raises."""
    image = open_image(data, max_pixels=max_pixels)
    return max(1, len(read_frame_headers(image.format, data).durations_ms))


def decode_animation(
    data: bytes, *, max_pixels: int, max_frames: int, max_duration_s: float
) -> Animation | None:
    """Every frame of the animation `data`, or None where `data` is a still (one frame, or a
    format without animation), which `decode.decode_pixels` decodes.

    Raises `TooManyFramesError` for more than `max_frames` frames or a running time over
    `max_duration_s`, `ImageTooLargeError` where all frames together have more pixels than
    `max_pixels`, `InvalidImageError` where the first frame does not decode, and what
    `decode.image_size` raises (a file its first bytes show a still is left to the still path).
    """
    if not may_be_animated(data):
        return None
    image = open_image(data, max_pixels=max_pixels)
    headers = read_frame_headers(image.format, data)
    if len(headers.durations_ms) < 2:
        return None
    _check_limits(headers, image.size, max_pixels, max_frames, max_duration_s)
    frames = _decode_frames(image, headers)
    return Animation(
        frames=frames,
        durations_ms=headers.durations_ms[: len(frames)],
        loop=_plays(image),
    )


def _check_limits(
    headers: FrameHeaders,
    size: tuple[int, int],
    max_pixels: int,
    max_frames: int,
    max_duration_s: float,
) -> None:
    count = len(headers.durations_ms)
    if count > max_frames:
        raise TooManyFramesError(
            f"the animation has {count} frames, over the limit of {max_frames} (TOONQ_MAX_FRAMES)"
        )
    total_ms = sum(headers.durations_ms)
    if total_ms > max_duration_s * 1000:
        raise TooManyFramesError(
            f"the animation runs {total_ms / 1000:g} s, "
            f"over the limit of {max_duration_s:g} s (TOONQ_MAX_ANIMATION_S)"
        )
    width, height = size
    limit = pixel_limit(max_pixels)
    if count * width * height > limit:
        raise ImageTooLargeError(
            f"the animation is {count} frames of {width}x{height} = {count * width * height} "
            f"pixels, over the limit of {limit} pixels"
        )


def _decode_frames(image: Image.Image, headers: FrameHeaders) -> list[npt.NDArray[np.uint8]]:
    """The frames that decode, up to the first that does not (at least one)."""
    count = len(headers.durations_ms)
    compose = _apng_frames if image.format == "PNG" else _pillow_frames
    frames: list[npt.NDArray[np.uint8]] = []
    transpose: Image.Transpose | None = None
    try:
        for pixels in compose(image, headers):
            if not frames:  # read with the first frame: Pillow reads a PNG's EXIF with its pixels
                transpose = upright_transpose(image)
            frames.append(pixels)
            if len(frames) == count:
                break
    except Image.DecompressionBombError as exc:  # a GIF frame far larger than its canvas
        raise ImageTooLargeError(f"a frame of the {image.format} animation is too large") from exc
    except MemoryError:
        raise  # the machine's state, not the data's
    except Exception as exc:
        # Pillow raises many types on malformed data (see decode.decode_image).
        if not frames:
            raise InvalidImageError(
                f"the first frame of the {image.format} animation is corrupt or truncated: {exc}"
            ) from exc
    return frames if transpose is None else [_transposed(frame, transpose) for frame in frames]


def _pillow_frames(image: Image.Image, headers: FrameHeaders) -> Iterator[npt.NDArray[np.uint8]]:
    """Frames as Pillow composites them (GIF, WebP), cut to the canvas of the first: Pillow
    grows a GIF's canvas for a later frame that reaches past it, where viewers clip it."""
    canvas = (0, 0, *image.size)
    for index in range(len(headers.durations_ms)):
        image.seek(index)
        image.load()
        frame = image if image.size == canvas[2:] else image.crop(canvas)
        yield np.array(to_rgba(frame), dtype=np.uint8)


def _apng_frames(image: Image.Image, headers: FrameHeaders) -> Iterator[npt.NDArray[np.uint8]]:
    """APNG frames composited as the specification says: each frame's region replaces
    (OP_SOURCE) or is alpha-composited over (OP_OVER) the canvas, then is cleared to transparent
    black (OP_BACKGROUND) or restored (OP_PREVIOUS) before the next frame."""
    width, height = image.size
    canvas = np.zeros((height, width, 4), dtype=np.uint8)  # transparent black
    first = 1 if headers.has_default_image else 0
    for index in range(first, first + len(headers.durations_ms)):
        image.seek(index)
        x0, y0, x1, y1 = image.info["bbox"]
        dispose, blend = image.info.get("disposal"), image.info.get("blend")
        # Told the frame replaces its region, Pillow leaves the frame's own pixels there, for
        # `_over` to composite; its canvas outside the region is not read.
        image.blend_op = Blend.OP_SOURCE  # type: ignore[attr-defined]
        image.load()
        region = np.array(to_rgba(image.crop((x0, y0, x1, y1))), dtype=np.uint8)
        target = canvas[y0:y1, x0:x1]
        previous = target.copy() if dispose == Disposal.OP_PREVIOUS else None
        target[...] = _over(region, target) if blend == Blend.OP_OVER else region
        yield canvas.copy()
        if dispose == Disposal.OP_BACKGROUND:
            target[...] = 0
        elif previous is not None:
            target[...] = previous


def _over(source: npt.NDArray[np.uint8], backdrop: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Porter-Duff "source over backdrop" of straight-alpha RGBA pixels."""
    source_alpha = source[..., 3:].astype(np.float32) / 255
    backdrop_alpha = backdrop[..., 3:].astype(np.float32) / 255 * (1 - source_alpha)
    alpha = source_alpha + backdrop_alpha
    colour = source[..., :3] * source_alpha + backdrop[..., :3] * backdrop_alpha
    colour /= np.where(alpha > 0, alpha, 1)
    blended = np.concatenate([colour, alpha * 255], axis=-1)
    pixels: npt.NDArray[np.uint8] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return pixels


def _transposed(frame: npt.NDArray[np.uint8], method: Image.Transpose) -> npt.NDArray[np.uint8]:
    return np.array(Image.fromarray(frame).transpose(method), dtype=np.uint8)


def _plays(image: Image.Image) -> int:
    """Times the animation plays in all, 0 for ever. APNG's num_plays and WebP's loop count
    plays; GIF's NETSCAPE loop count n >= 1 repeats the animation n times after the first
    play, and a GIF without one plays once."""
    loop = image.info.get("loop")
    if image.format == "GIF":
        if loop is None:
            return 1
        return loop + 1 if loop else 0
    return int(loop or 0)
