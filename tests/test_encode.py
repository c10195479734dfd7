"""encode_rgba (PNG, lossless WebP) and encode_mask (grey PNG)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from toonq.shared.errors import ImageTooLargeError
from toonq.worker.engine.encode import CONTENT_TYPES, encode_mask, encode_rgba


def _planes(height: int = 24, width: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 3×H×W RGB and H×W alpha with a fully transparent band, whose RGB is not zero."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
    alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
    alpha[:, :8] = 0
    return rgb, alpha


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _expected_rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.dstack([rgb.transpose(1, 2, 0), alpha])


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_round_trip_is_exact_including_rgb_under_zero_alpha(fmt):
    rgb, alpha = _planes()
    image = _open(encode_rgba(rgb, alpha, fmt=fmt))
    assert image.format == fmt.upper()
    assert image.mode == "RGBA"
    assert image.size == (40, 24)
    assert np.array_equal(np.asarray(image), _expected_rgba(rgb, alpha))


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_tensors_encode_like_arrays(fmt):
    rgb, alpha = _planes(seed=1)
    from_tensors = encode_rgba(torch.from_numpy(rgb), torch.from_numpy(alpha), fmt=fmt)
    assert from_tensors == encode_rgba(rgb, alpha, fmt=fmt)


def test_non_contiguous_planes():
    rgb, alpha = _planes(seed=2)
    flipped_rgb, flipped_alpha = rgb[:, ::-1], alpha[::-1]
    image = _open(encode_rgba(flipped_rgb, flipped_alpha, fmt="png"))
    assert np.array_equal(np.asarray(image), _expected_rgba(flipped_rgb, flipped_alpha))


def test_mask_is_an_8_bit_grey_png():
    _, alpha = _planes(seed=3)
    image = _open(encode_mask(alpha))
    assert image.format == "PNG"
    assert image.mode == "L"
    assert image.size == (40, 24)
    assert np.array_equal(np.asarray(image), alpha)
    assert encode_mask(torch.from_numpy(alpha)) == encode_mask(alpha)


def test_compress_level_trades_size():
    # Smooth gradients compress well, so the levels differ clearly.
    ys, xs = np.mgrid[0:128, 0:128]
    rgb = np.stack([xs * 2, ys * 2, (xs + ys) % 256]).astype(np.uint8)
    alpha = np.full((128, 128), 255, np.uint8)
    sizes = [len(encode_rgba(rgb, alpha, fmt="png", png_compress_level=n)) for n in (0, 1, 9)]
    assert sizes[0] > sizes[1] > sizes[2]
    mask = (xs + ys).astype(np.uint8)
    assert len(encode_mask(mask, png_compress_level=0)) > len(encode_mask(mask))


def test_content_types():
    assert CONTENT_TYPES == {"png": "image/png", "webp": "image/webp"}


@pytest.mark.parametrize("level", [-1, 10])
def test_rejects_bad_compress_levels(level):
    rgb, alpha = _planes()
    with pytest.raises(ValueError, match=r"0\.\.9"):
        encode_rgba(rgb, alpha, fmt="png", png_compress_level=level)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        encode_mask(alpha, png_compress_level=level)


def test_rejects_other_layouts_and_types():
    rgb, alpha = _planes()
    with pytest.raises(ValueError, match="3×H×W"):
        encode_rgba(rgb.transpose(1, 2, 0), alpha, fmt="png")
    with pytest.raises(ValueError, match="does not match"):
        encode_rgba(rgb, alpha[:, :-1], fmt="png")
    with pytest.raises(ValueError, match="uint8"):
        encode_rgba(rgb.astype(np.float32), alpha, fmt="png")
    with pytest.raises(ValueError, match="H×W"):
        encode_mask(alpha[None])


def test_rejects_unknown_formats():
    rgb, alpha = _planes()
    with pytest.raises(ValueError, match="unknown output format"):
        encode_rgba(rgb, alpha, fmt="jpeg")  # type: ignore[arg-type]


def test_webp_size_limit_is_explicit():
    wide_rgb = np.zeros((3, 1, 16_384), np.uint8)
    with pytest.raises(ImageTooLargeError, match="16383"):
        encode_rgba(wide_rgb, np.zeros((1, 16_384), np.uint8), fmt="webp")
    assert encode_rgba(wide_rgb, np.zeros((1, 16_384), np.uint8), fmt="png")
