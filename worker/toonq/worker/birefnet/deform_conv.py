"""Modulated deformable convolution (DCNv2) with torchvision's semantics, torchvision optional.

``deform_conv2d`` dispatches on ``BACKEND`` (the environment variable ``TOONQ_DEFORM_CONV``, read
at import): ``auto`` (the default) runs ``torchvision.ops.deform_conv2d`` on a GPU when torchvision
imports and runs, and ``deform_conv2d_torch``, a pure-PyTorch version built on ``grid_sample``,
everywhere else: on the CPU the pure version measured about 1.5x faster end to end than
torchvision's CPU kernel. ``torchvision`` and ``pure`` force one implementation.

Semantics (torchvision's, weight groups = 1): for output pixel (ho, wo) and kernel tap
k = i * kw + j, the sampling point is ``py = ho*s - p + i*d + dy_k``, ``px = wo*s - p + j*d + dx_k``
with the offsets interleaved per tap as (dy, dx). Samples are bilinear with zero padding; the mask
multiplies each sample before the weighted sum over (channel, tap).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "torchvision", "pure"]
BACKEND: Backend = cast(Backend, os.environ.get("TOONQ_DEFORM_CONV") or "auto")
if BACKEND not in get_args(Backend):
    raise ValueError(f"TOONQ_DEFORM_CONV must be auto, torchvision or pure; got {BACKEND!r}")

# Upper bound on the elements of the sampled "column" tensor per chunk of kernel taps; a 7x7
# kernel over 64 channels at 256x256 would otherwise need 0.8 GB in float32.
_MAX_COLUMN_ELEMENTS = 1 << 25

# Dtypes torchvision's kernels accept (bfloat16 is rejected, at least on CPU).
_TORCHVISION_DTYPES = (torch.float32, torch.float64, torch.float16)

IntPair = int | tuple[int, int]
_DeformFn = Callable[..., Tensor]


def _load_torchvision_op() -> _DeformFn | None:
    """torchvision's op if it imports and runs; a broken C++ extension raises at import or call."""
    try:
        from torchvision.ops import deform_conv2d as op

        probe = torch.zeros(1, 1, 2, 2)
        op(probe, torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 1, 1), mask=torch.ones(1, 1, 2, 2))
    except (ImportError, RuntimeError, OSError):
        return None
    fn: _DeformFn = op
    return fn


_TORCHVISION_OP = _load_torchvision_op()


def has_torchvision_op() -> bool:
    """Whether ``deform_conv2d`` can dispatch to torchvision."""
    return _TORCHVISION_OP is not None


def backend_for(device: torch.device) -> Literal["torchvision", "pure"]:
    """The implementation ``deform_conv2d`` runs for inputs on ``device`` (module docstring)."""
    wanted = BACKEND == "torchvision" or (BACKEND == "auto" and device.type == "cuda")
    return "torchvision" if wanted and has_torchvision_op() else "pure"


def _pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable conv through the ``BACKEND`` implementation (see the module docstring).

    Shapes: input B x Cin x H x W, offset B x 2*G*kh*kw x Ho x Wo, weight Cout x Cin x kh x kw,
    mask B x G*kh*kw x Ho x Wo; returns B x Cout x Ho x Wo in the input dtype.
    """
    op = _TORCHVISION_OP
    if op is None or backend_for(input.device) == "pure":
        return deform_conv2d_torch(input, offset, weight, bias, stride, padding, dilation, mask)
    # torchvision rejects bfloat16: such inputs run in float32 and are cast back.
    work = input.dtype if input.dtype in _TORCHVISION_DTYPES else torch.float32
    out: Tensor = op(
        input.to(work),
        offset.to(work),
        weight.to(work),
        None if bias is None else bias.to(work),
        stride=stride,
        padding=padding,
        dilation=dilation,
        mask=None if mask is None else mask.to(work),
    )
    return out.to(input.dtype)


def deform_conv2d_torch(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Pure-PyTorch deformable conv (same contract as :func:`deform_conv2d`).

    Half-precision inputs are sampled and reduced in float32: bfloat16 grid coordinates alone
    would be off by up to half a pixel on a 256-wide map.
    """
    batch, cin, height, width = input.shape
    cout, wcin, kh, kw = weight.shape
    taps = kh * kw
    if wcin != cin:
        raise ValueError(
            f"weight expects {wcin} input channels, input has {cin} (groups unsupported)"
        )
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    groups = offset.shape[1] // (2 * taps)
    if groups * 2 * taps != offset.shape[1] or cin % groups or offset.shape[-2:] != (out_h, out_w):
        raise ValueError(f"offset shape {tuple(offset.shape)} does not fit the kernel and input")
    if mask is not None and mask.shape[1] != groups * taps:
        raise ValueError(f"mask has {mask.shape[1]} channels, expected {groups * taps}")

    out_dtype = input.dtype
    dtype = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    device = input.device
    # (B*G, Cg, H, W): each offset group samples its own slice of channels.
    src = input.to(dtype).reshape(batch * groups, cin // groups, height, width)
    delta = offset.to(dtype).reshape(batch, groups, taps, 2, out_h, out_w)
    modulation = None if mask is None else mask.to(dtype).reshape(batch, groups, 1, taps, -1)
    # Weight columns ordered (g, c, tap) to match the sampled tensor's channel-major layout.
    w = weight.to(dtype).reshape(cout, groups, cin // groups, taps)

    # Undeformed sampling positions, per tap, in pixels: (taps, Ho, 1) rows and (taps, 1, Wo) cols.
    tap_i = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw)
    tap_j = torch.arange(kw, device=device, dtype=dtype).repeat(kh)
    rows = torch.arange(out_h, device=device, dtype=dtype) * sh - ph
    cols = torch.arange(out_w, device=device, dtype=dtype) * sw - pw
    base_y = (rows[None, :] + tap_i[:, None] * dh)[:, :, None]
    base_x = (cols[None, :] + tap_j[:, None] * dw)[:, None, :]

    chunk = max(1, _MAX_COLUMN_ELEMENTS // max(1, batch * cin * out_h * out_w))
    out = torch.zeros(batch, cout, out_h * out_w, device=device, dtype=dtype)
    for start in range(0, taps, chunk):
        stop = min(taps, start + chunk)
        n = stop - start
        py = base_y[start:stop] + delta[:, :, start:stop, 0]
        px = base_x[start:stop] + delta[:, :, start:stop, 1]
        # grid_sample's align_corners=False maps pixel p to (2p + 1) / size - 1 and pads with zeros,
        # which is exactly the bilinear-with-zero-border rule of the op.
        grid = torch.stack(((2 * px + 1) / width - 1, (2 * py + 1) / height - 1), dim=-1)
        grid = grid.view(batch * groups, n * out_h, out_w, 2)
        sampled = F.grid_sample(
            src, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        sampled = sampled.view(batch, groups, cin // groups, n, out_h * out_w)
        if modulation is not None:
            sampled = sampled * modulation[:, :, :, start:stop]
        columns = sampled.reshape(batch, cin * n, out_h * out_w)
        out += w[..., start:stop].reshape(cout, cin * n) @ columns
    if bias is not None:
        out = out + bias.to(dtype)[None, :, None]
    return out.view(batch, cout, out_h, out_w).to(out_dtype)
