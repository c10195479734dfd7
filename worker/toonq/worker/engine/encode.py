"""Encode results: the RGBA cut-out and the bare 8-bit mask, each as PNG or lossless WebP.

Array layout: `encode_rgba` takes channels first like the rest of the engine's tensors: RGB is
3×H×W, alpha is H×W, both uint8, as NumPy arrays or torch tensors on any device, and interleaves
them into H×W×4 in one copy. `encode_rgba_pixels` takes the interleaved H×W×4 array itself,
for a caller that holds one already: no copy.

PNG has two encoders that store the same pixels: imagecodecs (libpng on zlib-ng) when it is
installed, else Pillow. Pillow tries all five row filters on every row; at the fast levels
imagecodecs is given one, Paeth, and zlib's run-length strategy: `toonq bench` measured that
2-3x faster than Pillow at level 1, for files 10-30% smaller.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from toonq.shared.choices import OutputFormat
from toonq.shared.errors import ImageTooLargeError

try:
    import imagecodecs
except ImportError:  # an optional speed-up: Pillow writes the same pixels
    imagecodecs = None  # type: ignore[assignment]

CONTENT_TYPES: Final[Mapping[OutputFormat, str]] = {"png": "image/png", "webp": "image/webp"}

PngEncoder = Literal["imagecodecs", "pillow"]

#: libwebp's limit on either side of an image.
WEBP_MAX_SIDE: Final = 16383
#: Lossless WebP: method 0 at quality (effort) 0 is the fastest. Pillow's default quality, 80,
#: measured 1.4-4x slower for the same size; methods 1-6, 3.5-15x slower for files 15-27% smaller.
WEBP_METHOD: Final = 0
WEBP_QUALITY: Final = 0

#: imagecodecs' fast levels, 1 to this one, use one Paeth filter and zlib's run-length strategy,
#: whose speed and output do not depend on the level. Higher levels filter adaptively, as Pillow
#: does, for smaller anime cut-outs at several times the CPU (photos gain nothing there).
_FAST_MAX_LEVEL: Final = 3
_ZLIB_RLE_STRATEGY: Final = 3
_PNG_FILTER_NONE: Final = 0x08
_PNG_FILTER_PAETH: Final = 0x80


def available_png_encoders() -> tuple[PngEncoder, ...]:
    """The PNG encoders installed, fastest first."""
    return ("imagecodecs", "pillow") if imagecodecs is not None else ("pillow",)


def default_png_encoder() -> PngEncoder:
    return available_png_encoders()[0]


def encode_rgba(
    rgb: npt.NDArray[np.uint8] | torch.Tensor,
    alpha: npt.NDArray[np.uint8] | torch.Tensor,
    *,
    fmt: OutputFormat,
    png_compress_level: int = 1,
    png_encoder: PngEncoder | None = None,
    webp_method: int = WEBP_METHOD,
    webp_quality: int = WEBP_QUALITY,
) -> bytes:
    """Encode `rgb` (3×H×W) with `alpha` (H×W) as one RGBA image in `fmt`, losslessly.

    PNG uses zlib level `png_compress_level` (0-9; 1 is several times faster than Pillow's
    default 6) with `png_encoder` (default: the fastest installed). WebP is lossless, by default
    with the fastest settings, and `exact` so the RGB under alpha = 0 is stored as given instead
    of being replaced by the encoder.
    """
    colour = _as_array(rgb, "rgb")
    mask = _as_array(alpha, "alpha")
    if colour.ndim != 3 or colour.shape[0] != 3:
        raise ValueError(f"rgb must be 3×H×W, got shape {colour.shape}")
    if mask.shape != colour.shape[1:]:
        raise ValueError(f"alpha {mask.shape} does not match the rgb size {colour.shape[1:]}")
    interleaved = np.empty((*mask.shape, 4), dtype=np.uint8)
    interleaved[..., :3] = colour.transpose(1, 2, 0)
    interleaved[..., 3] = mask
    return encode_rgba_pixels(
        interleaved,
        fmt=fmt,
        png_compress_level=png_compress_level,
        png_encoder=png_encoder,
        webp_method=webp_method,
        webp_quality=webp_quality,
    )


def encode_rgba_pixels(
    pixels: npt.NDArray[np.uint8],
    *,
    fmt: OutputFormat,
    png_compress_level: int = 1,
    png_encoder: PngEncoder | None = None,
    webp_method: int = WEBP_METHOD,
    webp_quality: int = WEBP_QUALITY,
) -> bytes:
    """Encode uint8 H×W×4 RGBA `pixels` in `fmt`, losslessly, as `encode_rgba` does."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 4:
        raise ValueError(f"pixels must be uint8 H×W×4, got {pixels.dtype} of shape {pixels.shape}")
    _check_format(fmt)
    if fmt == "png":
        return _encode_png(pixels, png_compress_level, png_encoder)
    return _encode_webp(pixels, webp_method, webp_quality)


def encode_mask(
    alpha: npt.NDArray[np.uint8] | torch.Tensor,
    *,
    fmt: OutputFormat = "png",
    png_compress_level: int = 1,
    png_encoder: PngEncoder | None = None,
    webp_method: int = WEBP_METHOD,
    webp_quality: int = WEBP_QUALITY,
) -> bytes:
    """Encode an H×W uint8 alpha as an 8-bit greyscale PNG, or a lossless WebP (which has no
    grey mode: its three colour channels each hold the mask)."""
    mask = _as_array(alpha, "alpha")
    if mask.ndim != 2:
        raise ValueError(f"alpha must be H×W, got shape {mask.shape}")
    _check_format(fmt)
    if fmt == "png":
        return _encode_png(mask, png_compress_level, png_encoder)
    return _encode_webp(mask, webp_method, webp_quality)


def _check_format(fmt: OutputFormat) -> None:
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {sorted(CONTENT_TYPES)}")


def _as_array(values: npt.NDArray[np.uint8] | torch.Tensor, name: str) -> npt.NDArray[np.uint8]:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {array.dtype}")
    return array


def _encode_png(pixels: npt.NDArray[np.uint8], level: int, encoder: PngEncoder | None) -> bytes:
    """PNG of H×W×4 (RGBA) or H×W (grey) `pixels`."""
    if not 0 <= level <= 9:
        raise ValueError(f"the PNG compression level must be in 0..9, got {level}")
    encoder = encoder or default_png_encoder()
    if encoder not in available_png_encoders():
        raise ValueError(f"PNG encoder {encoder!r} is not installed: {available_png_encoders()}")
    if encoder == "pillow":
        return _save(Image.fromarray(pixels), "PNG", compress_level=level)
    options: dict[str, int] = {}  # levels above the fast ones: libpng's adaptive filters
    if level == 0:
        options = {"filter": _PNG_FILTER_NONE}  # stored: filtering would only cost time
    elif level <= _FAST_MAX_LEVEL:
        options = {"strategy": _ZLIB_RLE_STRATEGY, "filter": _PNG_FILTER_PAETH}
    # libpng reads whole rows: a copy only where the rows are strided.
    data = imagecodecs.png_encode(np.ascontiguousarray(pixels), level=level, **options)
    return bytes(data)


def _encode_webp(pixels: npt.NDArray[np.uint8], method: int, quality: int) -> bytes:
    """Lossless WebP of H×W×4 (RGBA) or H×W (grey) `pixels`."""
    height, width = pixels.shape[:2]
    if max(height, width) > WEBP_MAX_SIDE:
        raise ImageTooLargeError(
            f"WebP cannot store a {width}x{height} image (at most {WEBP_MAX_SIDE} pixels "
            "per side); use PNG"
        )
    image = Image.fromarray(pixels)
    return _save(image, "WEBP", lossless=True, method=method, quality=quality, exact=True)


def _save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
