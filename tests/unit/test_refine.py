"""refine_foreground (blur-fusion) and its O(1)-per-pixel box filter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toonq.worker.engine.refine import box_filter, refine_foreground

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")),
]


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_box(x: torch.Tensor, size: int) -> torch.Tensor:
    """The definition: replicate padding (size/2 − 1, size/2) for even sizes, centred for odd
    ones, then a size×size average pool with stride 1."""
    half = size // 2
    pads = (half,) * 4 if size % 2 else (half - 1, half, half - 1, half)
    return F.avg_pool2d(F.pad(x, pads, mode="replicate"), size, stride=1)


def _reference_refine(
    image: torch.Tensor, alpha: torch.Tensor, radius1: int, radius2: int
) -> torch.Tensor:
    """The reference doc's formulas, written out directly with avg_pool2d."""
    i = image.float().unsqueeze(0) / 255
    a = alpha.float().view(1, 1, *alpha.shape) / 255

    def one_pass(f: torch.Tensor, b: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        blurred_a = _reference_box(a, r)
        blurred_f = _reference_box(f * a, r) / (blurred_a + 1e-5)
        blurred_b = _reference_box(b * (1 - a), r) / ((1 - blurred_a) + 1e-5)
        f = blurred_f + a * (i - a * blurred_f - (1 - a) * blurred_b)
        return f.clamp(0, 1), blurred_b

    f1, b1 = one_pass(i, i, radius1)
    f2, _ = one_pass(f1, b1, radius2)
    return (f2[0] * 255).to(torch.uint8)


def _soft_alpha(height: int, width: int) -> torch.Tensor:
    """A disc with a soft edge: 255 inside, 0 outside, a ramp between."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    distance = ((ys - height / 2) ** 2 + (xs - width / 2) ** 2).sqrt()
    return ((height / 3 - distance) * 40).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [1, 2, 3, 6, 7, 16, 45, 90])
def test_box_filter_matches_avg_pool_with_replicate_padding(device, size):
    # 37×53 is smaller than the larger boxes: the padding is then wider than the image.
    x = torch.rand((2, 3, 37, 53), generator=_generator(size))
    out = box_filter(x.to(device), size).cpu()
    assert out.shape == x.shape
    # Against the definition in float64: avg_pool2d in float32 is itself off by up to 3e-5 for
    # a 90×90 box (8100 terms in one sum), the blocked sums by about 1e-7.
    exact = _reference_box(x.double(), size)
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-6)


def test_even_box_window_is_shifted_right():
    # Impulse at 5 under a width-4 box: the window at i is [i - 1, i + 2], so it sees the impulse
    # at i = 3..6.
    x = torch.zeros((1, 1, 1, 12))
    x[..., 5] = 1.0
    row = box_filter(x, 4)[0, 0, 0]
    assert row.nonzero().flatten().tolist() == [3, 4, 5, 6]


def test_box_filter_stays_accurate_on_a_long_axis():
    # A cumulative sum over 20 000 values in float32 would drift; the blocked sums do not.
    x = torch.rand((1, 1, 2, 20_000), generator=_generator(1))
    out = box_filter(x, 90)
    torch.testing.assert_close(out.double(), _reference_box(x.double(), 90), rtol=0, atol=1e-6)


def test_box_filter_rejects_an_empty_box():
    with pytest.raises(ValueError, match=">= 1"):
        box_filter(torch.zeros((1, 1, 4, 4)), 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("radius1", "radius2"), [(90, 6), (15, 4), (9, 3)])
def test_refine_matches_a_direct_reference(device, radius1, radius2):
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=_generator(2))
    alpha = _soft_alpha(48, 64)
    out = refine_foreground(image.to(device), alpha.to(device), radius1, radius2).cpu()
    assert out.dtype == torch.uint8
    assert out.shape == (3, 48, 64)
    expected = _reference_refine(image, alpha, radius1, radius2)
    assert (out.int() - expected.int()).abs().max() <= 1


def test_refine_pulls_edge_colours_towards_the_foreground():
    # Red foreground on a blue background; the soft edge mixes both.
    alpha = _soft_alpha(48, 64)
    a = alpha.float() / 255
    image = torch.stack([a, torch.zeros_like(a), 1 - a]) * 255
    out = refine_foreground(image.round().to(torch.uint8), alpha)
    edge = (alpha > 20) & (alpha < 235)
    assert out[2][edge].float().mean() < 0.5 * image[2][edge].mean()
    assert out[0][edge].float().mean() > image[0][edge].mean()


def test_opaque_alpha_returns_the_image():
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=_generator(3))
    alpha = torch.full((40, 30), 255, dtype=torch.uint8)
    out = refine_foreground(image, alpha)
    # ×255 truncates: a float result one ulp under the input value loses one grey level.
    assert (image.int() - out.int()).min() >= 0
    assert (image.int() - out.int()).max() <= 1
    # Half a level above each value survives the truncation: then the image comes back exactly.
    centred = (image.float() + 0.5) / 255
    assert torch.equal(refine_foreground(centred, alpha.float() / 255), image)


def test_uint8_and_float_inputs_agree():
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=_generator(4))
    alpha = _soft_alpha(20, 24)
    as_float = refine_foreground(image.float() / 255, alpha.float() / 255, 9, 3)
    assert torch.equal(refine_foreground(image, alpha, 9, 3), as_float)


@pytest.mark.parametrize(
    ("image", "alpha"),
    [
        (torch.zeros((4, 8, 8)), torch.zeros((8, 8))),
        (torch.zeros((3, 8, 8)), torch.zeros((8, 9))),
        (torch.zeros((3, 8, 8), dtype=torch.int32), torch.zeros((8, 8))),
    ],
    ids=["rgba", "size-mismatch", "int32"],
)
def test_refine_rejects_bad_inputs(image, alpha):
    with pytest.raises(ValueError, match=r"expected|match"):
        refine_foreground(image, alpha)
