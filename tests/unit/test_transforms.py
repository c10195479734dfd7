"""to_model_input (resize + normalisation) and logits_to_alpha (sigmoid, resize back, truncate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toonq.worker.engine.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    logits_to_alpha,
    to_model_input,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")),
]
MEAN = np.array(IMAGENET_MEAN).reshape(1, 3, 1, 1)
STD = np.array(IMAGENET_STD).reshape(1, 3, 1, 1)


def _random_rgb(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _normalise(pixels: np.ndarray) -> np.ndarray:
    return np.asarray((pixels / 255.0 - MEAN) / STD)


def _half_pixel_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2 INTER_LINEAR written out: source = (dst + 0.5) · in / out − 0.5, clamped to the
    image, two taps per axis."""

    def taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, source - low

    y0, y1, wy = taps(height, image.shape[-2])
    x0, x1, wx = taps(width, image.shape[-1])
    rows = image[..., y0, :] * (1 - wy)[:, None] + image[..., y1, :] * wy[:, None]
    return np.asarray(rows[..., x0] * (1 - wx) + rows[..., x1] * wx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("source", [(5, 7), (45, 70), (64, 96)], ids=["up", "down", "down-int"])
def test_resize_is_half_pixel_bilinear_without_antialias(device, source):
    rgb = _random_rgb((2, 3, *source))
    out = to_model_input(rgb.to(device), (32, 64)).cpu().double().numpy()
    expected = _normalise(_half_pixel_bilinear(rgb.double().numpy(), 32, 64))
    assert out.shape == (2, 3, 32, 64)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_integer_downscale_by_hand():
    # 64×96 -> 32×32: rows fall halfway between two source rows, columns on a source column.
    rgb = _random_rgb((1, 3, 64, 96), seed=3)
    pixels = rgb.double().numpy()
    by_hand = (pixels[..., 0::2, 1::3] + pixels[..., 1::2, 1::3]) / 2
    out = to_model_input(rgb, 32).double().numpy()
    np.testing.assert_allclose(out, _normalise(by_hand), atol=2e-5)


def test_normalisation_of_a_plain_colour():
    rgb = torch.empty((1, 3, 40, 24), dtype=torch.uint8)
    rgb[0, 0], rgb[0, 1], rgb[0, 2] = 0, 128, 255
    out = to_model_input(rgb, 32)
    for channel, value in enumerate((0, 128, 255)):
        expected = (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(out[0, channel], torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_model_size_input_is_not_resampled(device):
    rgb = _random_rgb((1, 3, 32, 64), seed=4)
    out = to_model_input(rgb.to(device), (32, 64)).cpu().double().numpy()
    np.testing.assert_allclose(out, _normalise(rgb.double().numpy()), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype(dtype):
    assert to_model_input(_random_rgb((1, 3, 8, 8)), 32, dtype).dtype == dtype


def test_images_of_different_sizes_are_resized_then_stacked():
    images = [_random_rgb((3, 20, 30), seed=5), _random_rgb((3, 64, 32), seed=6)]
    images.append(_random_rgb((3, 64, 64), seed=7))  # at the model size already
    batch = to_model_input(images, 64)
    assert batch.shape == (3, 3, 64, 64)
    for index, image in enumerate(images):
        assert torch.equal(batch[index : index + 1], to_model_input(image.unsqueeze(0), 64))


@pytest.mark.parametrize("size", [1000, (1024, 1000), 0, (-32, 32)])
def test_resolution_must_be_a_multiple_of_32(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        to_model_input(_random_rgb((1, 3, 8, 8)), size)


@pytest.mark.parametrize(
    "images",
    [
        torch.zeros((3, 8, 8), dtype=torch.uint8),
        torch.zeros((1, 4, 8, 8), dtype=torch.uint8),
        torch.zeros((1, 3, 8, 8)),
        [torch.zeros((1, 3, 8, 8), dtype=torch.uint8)],
    ],
    ids=["unbatched", "rgba", "float", "batched-in-list"],
)
def test_to_model_input_rejects_other_layouts(images):
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(images, 32)


def test_to_model_input_rejects_an_empty_list():
    with pytest.raises(ValueError, match="no images"):
        to_model_input([], 32)


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (1, 3, 4)])
def test_logits_to_alpha_size_and_corners(device, shape):
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 4
    alpha = logits_to_alpha(logits.to(device), (7, 11)).cpu()
    assert alpha.dtype == torch.uint8
    assert alpha.shape == (7, 11)
    probabilities = torch.sigmoid(logits.reshape(3, 4))
    # align_corners=True: the corner pixels of both grids coincide.
    for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert alpha[i, j] == int(probabilities[i, j] * 255)


@pytest.mark.parametrize("device", DEVICES)
def test_logits_at_the_output_size_give_their_own_sigmoid(device):
    logits = torch.randn((1, 1, 6, 5), generator=torch.Generator().manual_seed(1)) * 4
    before = logits.clone()
    alpha = logits_to_alpha(logits.to(device), (6, 5)).cpu()
    assert torch.equal(alpha, (torch.sigmoid(logits[0, 0]) * 255).to(torch.uint8))
    assert torch.equal(logits, before)


def test_logits_to_alpha_interpolates_between_corners():
    # 1×2 -> 1×3 with align_corners=True: the middle sample is the mean of the two ends.
    # 255 × (0.31, 0.57, 0.83) = (79.05, 145.35, 211.65): far from integers, so float error
    # cannot move the truncation.
    logits = torch.tensor([[[[_logit(0.31), _logit(0.83)]]]])
    assert logits_to_alpha(logits, (1, 3)).tolist() == [[79, 145, 211]]


def test_logits_to_alpha_truncates_instead_of_rounding():
    probabilities = torch.tensor([100.9, 0.7, 254.99, 128.5]) / 255
    logits = torch.logit(probabilities.double()).float().view(1, 1, 1, 4)
    assert logits_to_alpha(logits, (1, 4)).tolist() == [[100, 0, 254, 128]]


def test_logits_to_alpha_saturates():
    logits = torch.tensor([[[-1e4, 1e4, -30.0, 30.0]]])
    assert logits_to_alpha(logits, (1, 4)).tolist() == [[0, 255, 0, 255]]


def test_logits_to_alpha_accepts_half_precision():
    logits = torch.zeros((1, 1, 2, 2), dtype=torch.float16)
    assert torch.unique(logits_to_alpha(logits, (2, 2))).tolist() == [127]  # 0.5 · 255 = 127.5


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (1, 2, 4, 4), (4, 4)])
def test_logits_to_alpha_rejects_batches(shape):
    with pytest.raises(ValueError, match="logits"):
        logits_to_alpha(torch.zeros(shape), (4, 4))
