"""_swap_bg_to_gray (tensors, any device) and composite_rgb (Pillow, on the host): RGBA onto a
solid colour, the same bytes from both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toonq.worker.engine.compositing import _swap_bg_to_gray, composite_rgb

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")),
]


def _random_rgba(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rgba = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    rgba[:, 3, 0, :4] = [0, 1, 254, 255]  # make sure the alpha extremes are there
    return rgba


def _numpy_reference(rgba: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    rgb = rgba[:, :3].astype(np.float32)
    a = rgba[:, 3:].astype(np.float32) / np.float32(255)
    background = np.array(color, np.float32).reshape(1, 3, 1, 1)
    return np.round(rgb * a + background * (np.float32(1) - a)).astype(np.uint8)


def _exact_reference(rgba: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """round((rgb·α + c·(255 − α)) / 255) in integers: never a tie, so half-up is fine."""
    rgb = rgba[:, :3].astype(np.int64)
    alpha = rgba[:, 3:].astype(np.int64)
    numerator = rgb * alpha + np.array(color).reshape(1, 3, 1, 1) * (255 - alpha)
    return ((2 * numerator + 255) // 510).astype(np.uint8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("color", [(128, 128, 128), (255, 0, 37)])
def test_formula_with_rounding(device, color):
    rgba = _random_rgba((3, 4, 33, 47))
    out = _swap_bg_to_gray(torch.from_numpy(rgba).to(device), color).cpu().numpy()
    assert out.dtype == np.uint8
    assert out.shape == (3, 3, 33, 47)
    assert np.array_equal(out, _numpy_reference(rgba, color))
    assert np.array_equal(out, _exact_reference(rgba, color))


def _on_host(rgba: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """composite_rgb on each image of a B×4×H×W batch, as B×3×H×W."""
    return np.stack([composite_rgb(image.transpose(1, 2, 0), color) for image in rgba]).transpose(
        0, 3, 1, 2
    )


def _every_rgb_alpha_pair() -> np.ndarray:
    values = np.arange(256, dtype=np.uint8)
    rgb, alpha = np.meshgrid(values, values, indexing="ij")
    return np.stack([rgb, rgb, rgb, alpha])[None]


def test_every_rgb_alpha_pair_rounds_exactly():
    rgba = _every_rgb_alpha_pair()
    out = _swap_bg_to_gray(torch.from_numpy(rgba), (128, 0, 255)).numpy()
    assert np.array_equal(out, _exact_reference(rgba, (128, 0, 255)))


@pytest.mark.parametrize("color", [(128, 0, 255), (1, 254, 37)])
def test_on_the_host_every_rgb_alpha_pair_rounds_exactly(color):
    rgba = _every_rgb_alpha_pair()
    assert np.array_equal(_on_host(rgba, color), _exact_reference(rgba, color))


def test_on_the_host_the_same_bytes_as_the_tensor_formula():
    rgba = _random_rgba((2, 4, 33, 47), seed=2)
    for color in [(128, 128, 128), (255, 0, 37)]:
        expected = _swap_bg_to_gray(torch.from_numpy(rgba), color).numpy()
        assert np.array_equal(_on_host(rgba, color), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_opaque_passes_unchanged_and_transparent_becomes_the_colour(device):
    rgba = _random_rgba((2, 4, 16, 16), seed=1)
    rgba[:, 3] = 255
    rgba[:, 3, :4] = 0
    out = _swap_bg_to_gray(torch.from_numpy(rgba).to(device), (10, 20, 30)).cpu().numpy()
    assert np.array_equal(out[:, :, 4:], rgba[:, :3, 4:])
    assert np.array_equal(
        out[:, :, :4], np.broadcast_to([10, 20, 30], (2, 4, 16, 3)).transpose(0, 3, 1, 2)
    )


def test_default_colour_is_mid_gray():
    transparent = torch.zeros((1, 4, 2, 2), dtype=torch.uint8)
    assert torch.unique(_swap_bg_to_gray(transparent)).tolist() == [128]


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros((4, 2, 2), dtype=torch.uint8),
        torch.zeros((1, 3, 2, 2), dtype=torch.uint8),
        torch.zeros((1, 4, 2, 2)),
    ],
    ids=["unbatched", "rgb", "float"],
)
def test_rejects_other_layouts(bad):
    with pytest.raises(ValueError, match="B×4×H×W"):
        _swap_bg_to_gray(bad)


def test_rejects_out_of_range_colour():
    with pytest.raises(ValueError, match=r"0\.\.255"):
        _swap_bg_to_gray(torch.zeros((1, 4, 2, 2), dtype=torch.uint8), (0, 256, 0))


def test_on_the_host_gives_a_new_writable_array_and_leaves_the_input_alone():
    rgba = _random_rgba((1, 4, 5, 6), seed=3)[0].transpose(1, 2, 0).copy()
    before = rgba.copy()
    out = composite_rgb(rgba, (9, 9, 9))
    assert out.shape == (5, 6, 3)
    assert out.dtype == np.uint8
    assert out.flags.writeable
    assert np.array_equal(rgba, before)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 2, 3), np.uint8), np.zeros((4, 2, 2), np.uint8), np.zeros((2, 2, 4))],
    ids=["rgb", "channels-first", "float"],
)
def test_on_the_host_rejects_other_layouts(bad):
    with pytest.raises(ValueError, match="H×W×4"):
        composite_rgb(bad)


def test_on_the_host_rejects_out_of_range_colour():
    with pytest.raises(ValueError, match=r"0\.\.255"):
        composite_rgb(np.zeros((2, 2, 4), np.uint8), (-1, 0, 0))
