"""How far one mask is from another, in steps of the 8-bit alpha toonq writes (1/255)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskDifference:
    #: Over the masks themselves (sigmoid values x 255): how close the arithmetic is.
    max_steps: float | None
    mean_steps: float | None
    #: Over the 8-bit alphas written from them (x 255, truncated, as `logits_to_alpha` does):
    #: what a user would see.
    alpha_max_steps: int | None
    alpha_mean_steps: float | None
    alpha_differing_fraction: float | None
    #: NaN or infinite pixels of the mask (half precision overflowing), left out of the above.
    nonfinite_pixels: int


def mask_difference(mask: torch.Tensor, reference: torch.Tensor) -> MaskDifference:
    """`mask` against `reference`: masks of the same shape, values in [0, 1]."""
    mask, reference = mask.detach().float().cpu(), reference.detach().float().cpu()
    finite = torch.isfinite(mask)
    nonfinite = int((~finite).sum())
    if not finite.any():
        return MaskDifference(None, None, None, None, None, nonfinite)
    mask, reference = mask[finite], reference[finite]
    steps = (mask - reference).abs() * 255
    alpha = (_alpha(mask) - _alpha(reference)).abs()
    return MaskDifference(
        max_steps=round(steps.max().item(), 4),
        mean_steps=round(steps.mean().item(), 5),
        alpha_max_steps=int(alpha.max()),
        alpha_mean_steps=round(alpha.float().mean().item(), 5),
        alpha_differing_fraction=round((alpha > 0).float().mean().item(), 6),
        nonfinite_pixels=nonfinite,
    )


def _alpha(mask: torch.Tensor) -> torch.Tensor:
    return (mask * 255).to(torch.uint8).to(torch.int16)
