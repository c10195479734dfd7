"""Foreground colour estimation ("blur-fusion", Photoroom's fast-foreground-estimation).

Semi-transparent edge pixels of the input still carry the old background's colour. This
estimates the pure foreground colour behind them, so the cut-out has no halo on a new
background. It is the torch flavour of upstream BiRefNet's `refine_foreground` (replicate
borders), in float32 on whatever device the tensors live on.
"""

from __future__ import annotations

from typing import Final

import torch
import torch.nn.functional as F

_EPS: Final = 1e-5


def refine_foreground(
    image: torch.Tensor, alpha: torch.Tensor, radius1: int = 90, radius2: int = 6
) -> torch.Tensor:
    """Estimate the foreground colours of `image` (3×H×W, uint8 or float in [0, 1]) under
    `alpha` (H×W, uint8 or float in [0, 1]); returns uint8 3×H×W.

    Two blur-fusion passes: (F = B = image, box size `radius1`), then (F, B from the first pass,
    box size `radius2`). As upstream, the "radius" is the side of the k×k box. The result is
    clipped to [0, 1], then ×255 and truncated like upstream, so pixels with alpha = 1 may come
    out one grey level below the input.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3×H×W image, got shape {tuple(image.shape)}")
    if alpha.shape != image.shape[1:]:
        raise ValueError(
            f"alpha {tuple(alpha.shape)} does not match the image size {tuple(image.shape[1:])}"
        )
    source = _to_unit_float(image).unsqueeze(0)
    weight = _to_unit_float(alpha).view(1, 1, *alpha.shape)
    foreground, background = _blur_fusion(source, source, source, weight, radius1)
    foreground, _ = _blur_fusion(source, foreground, background, weight, radius2)
    return (foreground[0] * 255.0).to(torch.uint8)


def box_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised size×size mean of each channel of `x` (N×C×H×W float), same shape out.

    Borders replicate the edge pixels. For an even size the window at i covers
    [i - size/2 + 1, i + size/2], as `avg_pool2d` after padding (size/2 - 1, size/2) does; for
    an odd one it is centred. Cost per pixel does not depend on `size` (see `_window_sums`).
    """
    if size < 1:
        raise ValueError(f"the box size must be >= 1, got {size}")
    height, width = x.shape[-2:]
    before, after = (size - 1) // 2, size // 2
    # The definition's replicate padding, plus the layout `_window_sums` works on: one filler in
    # front of each axis and whole blocks. One pad call does both.
    top, bottom = _block_layout(height, size)
    left, right = _block_layout(width, size)
    padded = F.pad(x, (left + before, right + after, top + before, bottom + after), "replicate")
    sums = _window_sums(_window_sums(padded, size, width, dim=-1), size, height, dim=-2)
    return sums / (size * size)


def _blur_fusion(
    image: torch.Tensor,
    foreground: torch.Tensor,
    background: torch.Tensor,
    alpha: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: returns (new foreground clipped to [0, 1], blurred background)."""
    # One filter call for alpha, F·A and B·(1 − A): 1 + 3 + 3 channels.
    blurred = box_filter(
        torch.cat([alpha, foreground * alpha, background * (1.0 - alpha)], dim=1), size
    )
    blurred_alpha = blurred[:, :1]
    blurred_fg = blurred[:, 1:4] / (blurred_alpha + _EPS)
    blurred_bg = blurred[:, 4:] / ((1.0 - blurred_alpha) + _EPS)
    residual = image - alpha * blurred_fg - (1.0 - alpha) * blurred_bg
    return (blurred_fg + alpha * residual).clamp_(0.0, 1.0), blurred_bg


def _block_layout(count: int, size: int) -> tuple[int, int]:
    """Fillers (front, back) that `_window_sums` needs around the count + size - 1 values that
    `count` windows of `size` cover."""
    covered = count + size - 1
    blocks = covered // size + 1
    return 1, blocks * size - covered - 1


def _window_sums(x: torch.Tensor, size: int, count: int, *, dim: int) -> torch.Tensor:
    """Sums of the first `count` windows of `size` consecutive values along `dim` (-1 or -2),
    laid out as `_block_layout` says: one filler, the values, fillers up to whole blocks.

    Blocked prefix sums (in the spirit of van Herk / Gil-Werman): cut the axis into blocks of
    `size` and take prefix sums P inside each block. The window that starts right after offset
    t of block b is the rest of block b plus the first t + 1 values of block b + 1, that is
    total(b) + P[b + 1, t] - P[b, t]; the front filler is what makes "right after" line up with
    the window starts. Fillers cancel out of (front) or stay outside of (back) every sum kept,
    so any values do. Unlike one cumulative sum along the whole axis, no partial sum holds more
    than `size` terms: float32 stays accurate however large the image.
    """
    blocks = x.shape[dim] // size
    prefix = torch.unflatten(x, dim, (blocks, size)).cumsum(dim)
    totals = prefix.narrow(dim, size - 1, 1).narrow(dim - 1, 0, blocks - 1)
    sums = totals + (prefix.narrow(dim - 1, 1, blocks - 1) - prefix.narrow(dim - 1, 0, blocks - 1))
    return sums.flatten(dim - 1, dim).narrow(dim, 0, count)


def _to_unit_float(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if tensor.is_floating_point():
        return tensor.float()
    raise ValueError(f"expected uint8 or floating-point values, got {tensor.dtype}")
