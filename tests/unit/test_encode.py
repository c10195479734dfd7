"""encode_rgba and encode_rgba_pixels (PNG, lossless WebP) and encode_mask (grey PNG, WebP), with
either PNG encoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from toonq.shared.errors import ImageTooLargeError
from toonq.worker.engine import encode
from toonq.worker.engine.encode import (
    CONTENT_TYPES,
    available_png_encoders,
    default_png_encoder,
    encode_mask,
    encode_rgba,
    encode_rgba_pixels,
)

PNG_ENCODERS = available_png_encoders()


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


@pytest.mark.parametrize(("method", "quality"), [(0, 0), (4, 25)])
def test_a_mask_as_webp_is_lossless(method, quality):
    _, alpha = _planes(seed=9)
    image = _open(encode_mask(alpha, fmt="webp", webp_method=method, webp_quality=quality))
    assert (image.format, image.size) == ("WEBP", (40, 24))
    # WebP has no grey mode: each colour channel holds the mask.
    assert np.array_equal(np.asarray(image.convert("L")), alpha)
    assert np.array_equal(np.asarray(image.convert("RGB"))[..., 2], alpha)


@pytest.mark.parametrize("encoder", PNG_ENCODERS)
def test_compress_level_trades_size(encoder):
    # Smooth gradients compress well, so the levels differ clearly.
    ys, xs = np.mgrid[0:128, 0:128]
    rgb = np.stack([xs * 2, ys * 2, (xs + ys) % 256]).astype(np.uint8)
    alpha = np.full((128, 128), 255, np.uint8)
    sizes = [
        len(encode_rgba(rgb, alpha, fmt="png", png_compress_level=n, png_encoder=encoder))
        for n in (0, 1, 9)
    ]
    assert sizes[0] > sizes[1] > sizes[2]
    mask = (xs + ys).astype(np.uint8)
    stored = encode_mask(mask, png_compress_level=0, png_encoder=encoder)
    assert len(stored) > len(encode_mask(mask, png_encoder=encoder))


def test_content_types():
    assert CONTENT_TYPES == {"png": "image/png", "webp": "image/webp"}


@pytest.mark.parametrize("encoder", PNG_ENCODERS)
@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_interleaved_pixels_encode_as_their_planes(fmt, encoder):
    rgb, alpha = _planes(seed=9)
    pixels = _expected_rgba(rgb, alpha)
    data = encode_rgba_pixels(pixels, fmt=fmt, png_encoder=encoder)
    assert data == encode_rgba(rgb, alpha, fmt=fmt, png_encoder=encoder)
    assert np.array_equal(np.asarray(_open(data)), pixels)


def test_interleaved_pixels_must_be_uint8_with_four_channels():
    pixels = _expected_rgba(*_planes())
    bad_layouts: list[np.ndarray] = [pixels[..., :3], pixels.astype(np.uint16), pixels[0]]
    for bad in bad_layouts:
        with pytest.raises(ValueError, match="H×W×4"):
            encode_rgba_pixels(bad, fmt="png")


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
    with pytest.raises(ValueError, match="unknown output format"):
        encode_mask(alpha, fmt="jpeg")  # type: ignore[arg-type]


def test_webp_size_limit_is_explicit():
    wide_rgb = np.zeros((3, 1, 16_384), np.uint8)
    with pytest.raises(ImageTooLargeError, match="16383"):
        encode_rgba(wide_rgb, np.zeros((1, 16_384), np.uint8), fmt="webp")
    assert encode_rgba(wide_rgb, np.zeros((1, 16_384), np.uint8), fmt="png")
    with pytest.raises(ImageTooLargeError, match="16383"):
        encode_mask(np.zeros((16_384, 1), np.uint8), fmt="webp")


@pytest.mark.parametrize("level", [0, 1, 3, 4, 9])
@pytest.mark.parametrize("encoder", PNG_ENCODERS)
def test_every_png_encoder_and_level_is_lossless(encoder, level):
    rgb, alpha = _planes(height=33, width=47, seed=4)
    # Flat areas and runs as well as noise, so the filters and run-length paths all matter.
    rgb[:, 10:20] = 200
    alpha[20:] = 255
    image = _open(encode_rgba(rgb, alpha, fmt="png", png_compress_level=level, png_encoder=encoder))
    assert (image.format, image.mode) == ("PNG", "RGBA")
    assert np.array_equal(np.asarray(image), _expected_rgba(rgb, alpha))
    mask = _open(encode_mask(alpha, png_compress_level=level, png_encoder=encoder))
    assert (mask.format, mask.mode) == ("PNG", "L")
    assert np.array_equal(np.asarray(mask), alpha)


@pytest.mark.parametrize("encoder", PNG_ENCODERS)
def test_strided_planes_encode_with_every_png_encoder(encoder):
    pixels = np.random.default_rng(5).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgb, alpha = pixels[..., :3].transpose(2, 0, 1)[:, ::-1], pixels[::-1, :, 3]
    image = _open(encode_rgba(rgb, alpha, fmt="png", png_encoder=encoder))
    assert np.array_equal(np.asarray(image), _expected_rgba(rgb, alpha))
    assert np.array_equal(np.asarray(_open(encode_mask(alpha, png_encoder=encoder))), alpha)


def test_imagecodecs_is_the_default_png_encoder_when_installed():
    pytest.importorskip("imagecodecs")
    assert PNG_ENCODERS == ("imagecodecs", "pillow")
    rgb, alpha = _planes(seed=6)
    assert encode_rgba(rgb, alpha, fmt="png") == encode_rgba(
        rgb, alpha, fmt="png", png_encoder="imagecodecs"
    )


def test_without_imagecodecs_pillow_encodes_the_same_pixels(monkeypatch):
    rgb, alpha = _planes(seed=7)
    fast = encode_rgba(rgb, alpha, fmt="png")
    monkeypatch.setattr(encode, "imagecodecs", None)  # as where the package is not installed
    assert available_png_encoders() == ("pillow",)
    assert default_png_encoder() == "pillow"
    fallback = encode_rgba(rgb, alpha, fmt="png")
    assert fallback == encode_rgba(rgb, alpha, fmt="png", png_encoder="pillow")
    assert np.array_equal(np.asarray(_open(fallback)), np.asarray(_open(fast)))
    with pytest.raises(ValueError, match="not installed"):
        encode_rgba(rgb, alpha, fmt="png", png_encoder="imagecodecs")


@pytest.mark.parametrize(("method", "quality"), [(0, 0), (0, 80), (4, 25)])
def test_every_webp_setting_is_lossless(method, quality):
    rgb, alpha = _planes(seed=8)
    data = encode_rgba(rgb, alpha, fmt="webp", webp_method=method, webp_quality=quality)
    assert np.array_equal(np.asarray(_open(data)), _expected_rgba(rgb, alpha))
