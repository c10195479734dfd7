"""Tensors into and out of the model: resize + ImageNet normalisation, and logits -> 8-bit alpha.

Both follow the ToonOut fork's evaluation code: the input is stretched to the model resolution
with cv2-style bilinear (half-pixel centres, no antialias), and the mask goes back to the original
size with bilinear align_corners=True and is truncated to uint8 like `ToPILImage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import torch
import torch.nn.functional as F

from toonq.shared.choices import RESOLUTION_MULTIPLE

IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)


def to_model_input(
    rgb: torch.Tensor | Sequence[torch.Tensor],
    size: int | tuple[int, int],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Stretch RGB images to the model resolution and normalise them; returns B×3×h×w in `dtype`.

    `rgb` is a uint8 B×3×H×W batch, or a sequence of uint8 3×H×W images of any sizes (each is
    resized alone, then they are stacked). `size` is the model resolution, an int for a square
    or (h, w), each a multiple of 32. The aspect ratio is not kept, as in ToonOut.

    The resize is bilinear with half-pixel centres and no antialias, like the fork's
    `cv2.resize(INTER_LINEAR)`; it runs in float32 on the uint8 values, without cv2's rounding of
    the resized pixels to uint8 (a difference under half a grey level). Then x / 255, then
    (x - mean) / std with the ImageNet statistics, then the cast to `dtype`. The result is
    contiguous, whatever the layout of `rgb`.
    """
    target = _model_size(size)
    if isinstance(rgb, torch.Tensor):
        _check_uint8(rgb, "a B×3×H×W batch", ndim=4, channels=3)
        batch = _resize(rgb, target)
    else:
        if not rgb:
            raise ValueError("no images to batch")
        for image in rgb:
            _check_uint8(image, "3×H×W images", ndim=3, channels=3)
        batch = torch.cat([_resize(image.unsqueeze(0), target) for image in rgb])
    # (x / 255 - mean) / std as a multiply and an add in place, each channel with scalars: on
    # one planar float copy (`_resize`), the vectorised path; a per-channel tensor broadcast
    # over the batch, or a channels-last layout, costs two to three times as much.
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)):
        batch[:, channel].mul_(1.0 / (255.0 * std)).add_(-mean / std)
    return batch.to(dtype)


def logits_to_alpha(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Turn one image's mask logits (1×1×h×w or 1×h×w, any float dtype) into a uint8 H0×W0 alpha,
    where `size` = (H0, W0) is the original image size.

    sigmoid in float32, resize with bilinear align_corners=True (corner pixels map onto corner
    pixels), then ×255 and truncation toward zero, not rounding: that is what the fork's
    `inference.py` does through `ToPILImage`, whose outputs ToonOut's scores were measured on.
    """
    if logits.ndim not in (3, 4) or any(dim != 1 for dim in logits.shape[:-2]):
        raise ValueError(f"expected 1×1×h×w or 1×h×w logits, got shape {tuple(logits.shape)}")
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"the output size must be positive, got {size}")
    mask = torch.sigmoid(logits.float()).view(1, 1, *logits.shape[-2:])
    # At the mask's own size align_corners=True samples every pixel exactly: skipped, same bytes.
    if mask.shape[-2:] != size:
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=True)
    return mask[0, 0].mul_(255.0).to(torch.uint8)


def _model_size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1 or height % RESOLUTION_MULTIPLE or width % RESOLUTION_MULTIPLE:
        raise ValueError(
            f"the model resolution must be a positive multiple of {RESOLUTION_MULTIPLE}, "
            f"got {height}x{width}"
        )
    return height, width


def _check_uint8(tensor: torch.Tensor, expected: str, *, ndim: int, channels: int) -> None:
    if tensor.dtype != torch.uint8 or tensor.ndim != ndim or tensor.shape[-3] != channels:
        raise ValueError(
            f"expected {expected} of uint8, got {tensor.dtype} of shape {tuple(tensor.shape)}"
        )


def _resize(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 `batch` at `size` as a new planar (contiguous) float32 tensor: converted as it is
    when it is there already (typical 1024² SDXL output), else resized one channel at a time:
    bilinear works on each channel alone, so this gives the same values as all three at once
    while the float copy at the input's size is a third as large (4 bytes a pixel, not 12)."""
    if batch.shape[-2:] == size:
        return batch.to(torch.float32, memory_format=torch.contiguous_format)
    return torch.cat(
        [
            F.interpolate(
                batch[:, channel : channel + 1].float(),
                size=size,
                mode="bilinear",
                align_corners=False,
                antialias=False,
            )
            for channel in range(batch.shape[1])
        ],
        dim=1,
    )
