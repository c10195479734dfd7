"""deform_conv2d: the pure-PyTorch op against a per-pixel definition and against torchvision."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from toonq.worker.birefnet import deform_conv
from toonq.worker.birefnet.deform_conv import deform_conv2d, deform_conv2d_torch

# (batch, c_in, c_out, height, width, kernel, stride, padding, dilation, offset_groups)
CASES = [
    (2, 3, 4, 5, 7, 1, 1, 0, 1, 1),
    (2, 3, 4, 6, 5, 3, 1, 1, 1, 1),
    (1, 2, 3, 9, 8, 7, 1, 3, 1, 1),
    (1, 4, 2, 7, 6, 3, 2, 1, 2, 2),
]


def _bilinear(image: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear sample of ``C x H x W`` at (y, x); zero outside, per corner."""
    _, height, width = image.shape
    out = np.zeros(image.shape[0])
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return out
    y0, x0 = math.floor(y), math.floor(x)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                out += wy * wx * image[:, yy, xx]
    return out


def _reference(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: int,
    padding: int,
    dilation: int,
    mask: torch.Tensor,
) -> np.ndarray:
    """The definition, one output pixel and tap at a time, in float64."""
    xs, offs, ws, ms = (t.double().numpy() for t in (input, offset, weight, mask))
    batch, cin = xs.shape[:2]
    cout, _, kh, kw = ws.shape
    taps = kh * kw
    groups = offs.shape[1] // (2 * taps)
    cg = cin // groups
    out_h, out_w = offs.shape[-2:]
    out = np.zeros((batch, cout, out_h, out_w))
    for b in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                acc = bias.double().numpy().copy()
                for g in range(groups):
                    channels = slice(g * cg, (g + 1) * cg)
                    for i in range(kh):
                        for j in range(kw):
                            k = g * taps + i * kw + j
                            py = ho * stride - padding + i * dilation + offs[b, 2 * k, ho, wo]
                            px = wo * stride - padding + j * dilation + offs[b, 2 * k + 1, ho, wo]
                            sample = _bilinear(xs[b, channels], py, px) * ms[b, k, ho, wo]
                            acc += ws[:, channels, i, j] @ sample
                out[b, :, ho, wo] = acc
    return out


def _case(case: tuple[int, ...], integer_offsets: bool = False, seed: int = 0) -> dict[str, Any]:
    batch, cin, cout, height, width, k, stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(seed)
    out_h = (height + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    offset_shape = (batch, 2 * groups * k * k, out_h, out_w)
    if integer_offsets:
        # Exact integer positions hit the border cases (y = -1, y = H - 1, ...) of the zero padding.
        offset = torch.randint(-4, 5, offset_shape, generator=gen).float()
    else:
        # Up to 4 px: many samples land partly or wholly outside the image.
        offset = 4 * (2 * torch.rand(offset_shape, generator=gen) - 1)
    return {
        "input": torch.randn(batch, cin, height, width, generator=gen),
        "offset": offset,
        "weight": torch.randn(cout, cin, k, k, generator=gen),
        "bias": torch.randn(cout, generator=gen),
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "mask": 2 * torch.rand(batch, groups * k * k, out_h, out_w, generator=gen),
    }


def _as(args: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


@pytest.mark.parametrize("integer_offsets", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_pure_op_matches_definition(case: tuple[int, ...], integer_offsets: bool) -> None:
    args = _case(case, integer_offsets)
    expected = _reference(**args)
    np.testing.assert_allclose(
        deform_conv2d_torch(**_as(args, torch.float64)).numpy(), expected, atol=1e-10
    )
    np.testing.assert_allclose(deform_conv2d_torch(**args).numpy(), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_pure_op_matches_torchvision(case: tuple[int, ...]) -> None:
    ops = pytest.importorskip("torchvision.ops")
    args = _case(case, seed=1)
    expected = ops.deform_conv2d(**args)
    torch.testing.assert_close(deform_conv2d_torch(**args), expected, atol=1e-5, rtol=1e-5)


def test_without_mask_and_bias_matches_torchvision() -> None:
    ops = pytest.importorskip("torchvision.ops")
    args = _case(CASES[1], seed=2)
    args.pop("mask")
    args.pop("bias")
    torch.testing.assert_close(
        deform_conv2d_torch(**args), ops.deform_conv2d(**args), atol=1e-5, rtol=1e-5
    )


def test_chunking_over_taps_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _as(_case(CASES[2], seed=3), torch.float64)
    whole = deform_conv2d_torch(**args)
    # Room for 3 taps per chunk: 49 taps run as 17 chunks.
    monkeypatch.setattr(deform_conv, "_MAX_COLUMN_ELEMENTS", 3 * 2 * 9 * 8)
    torch.testing.assert_close(deform_conv2d_torch(**args), whole, atol=1e-12, rtol=0)


def test_zero_offsets_and_unit_mask_give_a_plain_conv() -> None:
    args = _case(CASES[1], seed=4)
    args["offset"] = torch.zeros_like(args["offset"])
    args["mask"] = torch.ones_like(args["mask"])
    plain = torch.nn.functional.conv2d(args["input"], args["weight"], args["bias"], padding=1)
    torch.testing.assert_close(deform_conv2d_torch(**args), plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", [deform_conv2d_torch, deform_conv2d])
def test_half_precision_keeps_dtype(op: Callable[..., torch.Tensor], dtype: torch.dtype) -> None:
    args = _case(CASES[1], seed=5)
    expected = deform_conv2d_torch(**args)
    out = op(**_as(args, dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=0.5, rtol=0.05)


def test_cpu_dispatch_uses_the_pure_op_unless_torchvision_is_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = _case(CASES[1], seed=6)
    assert torch.equal(deform_conv2d(**args), deform_conv2d_torch(**args))
    if deform_conv.has_torchvision_op():
        monkeypatch.setattr(deform_conv, "BACKEND", "torchvision")
        ops = pytest.importorskip("torchvision.ops")
        assert torch.equal(deform_conv2d(**args), ops.deform_conv2d(**args))


def test_rejects_mismatched_offsets() -> None:
    args = _case(CASES[1])
    args["offset"] = args["offset"][:, :-1]
    with pytest.raises(ValueError, match="offset shape"):
        deform_conv2d_torch(**args)
