"""Encode results: the RGBA cut-out (PNG or lossless WebP) and the bare mask (8-bit grey PNG).

Array layout: channels first like the rest of the engine's tensors: RGB is 3×H×W, alpha is H×W,
both uint8, as NumPy arrays or torch tensors on any device. The interleaving into Pillow's
H×W×4 happens here, in one copy.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from toonq.shared.errors import ImageTooLargeError
from toonq.shared.models import OutputFormat

CONTENT_TYPES: Final[Mapping[OutputFormat, str]] = {"png": "image/png", "webp": "image/webp"}

#: libwebp's limit on either side of an image.
WEBP_MAX_SIDE: Final = 16383


def encode_rgba(
    rgb: npt.NDArray[np.uint8] | torch.Tensor,
    alpha: npt.NDArray[np.uint8] | torch.Tensor,
    *,
    fmt: OutputFormat,
    png_compress_level: int = 1,
) -> bytes:
    """Encode `rgb` (3×H×W) with `alpha` (H×W) as one RGBA image in `fmt`.

    PNG uses zlib level `png_compress_level` (0-9; 1 is far faster than Pillow's default 6 for a
    few percent more bytes). WebP is lossless, with the fastest method, and `exact` so the RGB
    under alpha = 0 is stored as given instead of being replaced by the encoder.
    """
    colour = _as_array(rgb, "rgb")
    mask = _as_array(alpha, "alpha")
    if colour.ndim != 3 or colour.shape[0] != 3:
        raise ValueError(f"rgb must be 3×H×W, got shape {colour.shape}")
    if mask.shape != colour.shape[1:]:
        raise ValueError(f"alpha {mask.shape} does not match the rgb size {colour.shape[1:]}")
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {sorted(CONTENT_TYPES)}")
    height, width = mask.shape
    if fmt == "webp" and max(height, width) > WEBP_MAX_SIDE:
        raise ImageTooLargeError(
            f"WebP cannot store a {width}x{height} image (at most {WEBP_MAX_SIDE} pixels "
            "per side); use PNG"
        )
    interleaved = np.empty((height, width, 4), dtype=np.uint8)
    interleaved[..., :3] = colour.transpose(1, 2, 0)
    interleaved[..., 3] = mask
    image = Image.fromarray(interleaved)
    if fmt == "png":
        return _save_png(image, png_compress_level)
    return _save(image, "WEBP", lossless=True, method=0, exact=True)


def encode_mask(
    alpha: npt.NDArray[np.uint8] | torch.Tensor, *, png_compress_level: int = 1
) -> bytes:
    """Encode an H×W uint8 alpha as an 8-bit greyscale ("L") PNG."""
    mask = _as_array(alpha, "alpha")
    if mask.ndim != 2:
        raise ValueError(f"alpha must be H×W, got shape {mask.shape}")
    return _save_png(Image.fromarray(mask), png_compress_level)


def _as_array(values: npt.NDArray[np.uint8] | torch.Tensor, name: str) -> npt.NDArray[np.uint8]:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {array.dtype}")
    return array


def _save_png(image: Image.Image, compress_level: int) -> bytes:
    if not 0 <= compress_level <= 9:
        raise ValueError(f"the PNG compression level must be in 0..9, got {compress_level}")
    return _save(image, "PNG", compress_level=compress_level)


def _save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
