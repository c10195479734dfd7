"""Flatten RGBA inputs onto a solid colour before the model sees them.

ToonOut takes RGB only. Dropping alpha would show whatever colour transparent pixels happen to
hold, so transparent areas are composited onto a neutral colour (grey by default) instead.
"""

from __future__ import annotations

import torch


def _swap_bg_to_gray(
    rgba: torch.Tensor, color: tuple[int, int, int] = (128, 128, 128)
) -> torch.Tensor:
    """Composite a uint8 B×4×H×W batch (any device) onto `color`; returns uint8 B×3×H×W.

    out = round(rgb·a + color·(1 − a)) with a = alpha / 255, in float32. The exact value
    (rgb·alpha + color·(255 − alpha)) / 255 is never within 1/510 of a half-integer, far beyond
    float32 error, so the result is that value correctly rounded on every device. In particular,
    opaque pixels keep their RGB bit-exactly and fully transparent ones become `color`.
    """
    if rgba.dtype != torch.uint8 or rgba.ndim != 4 or rgba.shape[1] != 4:
        raise ValueError(
            f"expected a uint8 B×4×H×W tensor, got {rgba.dtype} of shape {tuple(rgba.shape)}"
        )
    if not all(0 <= channel <= 255 for channel in color):
        raise ValueError(f"colour channels must be in 0..255, got {color}")
    rgb = rgba[:, :3].float()
    alpha = rgba[:, 3:].float() / 255.0
    background = torch.tensor(color, dtype=torch.float32, device=rgba.device).view(1, 3, 1, 1)
    return (rgb * alpha + background * (1.0 - alpha)).round_().to(torch.uint8)
