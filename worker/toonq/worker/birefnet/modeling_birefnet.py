"""BiRefNet as trained for ToonOut: Swin v1 encoder run at full and half resolution, context
squeeze, and a 4-level decoder with deformable ASPP blocks, image-patch inputs and gdt gating.

The state dict holds the official checkpoint's entries, in its order, under readable names:
:mod:`.key_map` renames the official keys (``bb.norm0``, ``decoder.ipt_blk5``, ...) one to one.
Inference only: the model computes the eval path (BatchNorm with running statistics, dropout and
drop-path as identity) and must be used in ``eval()`` mode; the training-only heads exist solely
so that checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_birefnet import SIZE_MULTIPLE, BiRefNetConfig
from .deform_conv import deform_conv2d
from .swin import SwinTransformer, WindowAttention, relative_position_index

# Kernel sizes of the deformable ASPP branches after the 1x1 ``aspp1``.
ASPP_KERNEL_SIZES = (1, 3, 7)


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """The network's only resampling: bilinear, align_corners=True, no antialias (up or down)."""
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=True)


def image2patches(image: Tensor, size: Sequence[int]) -> Tensor:
    """Block space-to-depth of ``image`` onto a ``size`` grid (not pixel_unshuffle).

    ``B x C x H x W`` -> ``B x C*gh*gw x h x w`` with ``gh = H // h``, ``gw = W // w`` and
    ``out[:, c*gh*gw + i*gw + j, y, x] = image[:, c, i*h + y, j*w + x]``.
    """
    b, c, height, width = image.shape
    h, w = int(size[0]), int(size[1])
    gh, gw = height // h, width // w
    patches = image.reshape(b, c, gh, h, gw, w).permute(0, 1, 2, 4, 3, 5)
    return patches.reshape(b, c * gh * gw, h, w)


class ZeroInitConv2d(nn.Conv2d):
    """A conv that a fresh model initialises to zero (see ``BiRefNet._init_weights``)."""


class DeformableConv2d(nn.Module):
    """Modulated deformable k x k conv (stride 1, padding k//2, no bias); offsets and the
    (0, 2) modulation come from plain convs on the same input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        taps = kernel_size * kernel_size
        # Zero-initialised (the official init): a fresh deformable conv is a plain conv.
        self.offset_conv = ZeroInitConv2d(in_channels, 2 * taps, kernel_size, padding=self.padding)
        self.modulator_conv = ZeroInitConv2d(in_channels, taps, kernel_size, padding=self.padding)
        self.regular_conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=self.padding, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        """``B x Cin x H x W`` -> ``B x Cout x H x W``."""
        offset = self.offset_conv(x)
        modulation = 2.0 * torch.sigmoid(self.modulator_conv(x))
        return deform_conv2d(
            x, offset, self.regular_conv.weight, padding=self.padding, mask=modulation
        )


class DeformableBranch(nn.Module):
    """One ASPP branch: deformable conv, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, out_channels, kernel_size)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.relu(self.bn(self.atrous_conv(x)))
        return out


class ASPPDeformable(nn.Module):
    """Five parallel branches (1x1, deformable 1/3/7, global pool), concatenated and fused."""

    def __init__(self, in_channels: int, out_channels: int, branch_channels: int) -> None:
        super().__init__()
        self.aspp1 = DeformableBranch(in_channels, branch_channels, 1)
        self.aspp_deforms = nn.ModuleList(
            DeformableBranch(in_channels, branch_channels, k) for k in ASPP_KERNEL_SIZES
        )
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
        )
        n_branches = 2 + len(ASPP_KERNEL_SIZES)
        self.conv1 = nn.Conv2d(branch_channels * n_branches, out_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``B x Cin x H x W`` -> ``B x Cout x H x W`` (the official Dropout(0.5) is identity)."""
        # Upsampling the 1x1 pooled map with align_corners=True is an exact broadcast.
        pooled = self.global_avg_pool(x).expand(-1, -1, x.shape[-2], x.shape[-1])
        branches = [self.aspp1(x), *(branch(x) for branch in self.aspp_deforms), pooled]
        out: Tensor = self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1))))
        return out


class BasicDecBlk(nn.Module):
    """conv3x3 -> BN -> ReLU -> deformable ASPP -> conv3x3 -> BN (no final activation)."""

    def __init__(
        self, in_channels: int, out_channels: int, inter_channels: int, branch_channels: int
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.dec_att = ASPPDeformable(inter_channels, inter_channels, branch_channels)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)
        self.bn_in = nn.BatchNorm2d(inter_channels)
        self.bn_out = nn.BatchNorm2d(out_channels)
        self.relu_in = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``B x Cin x H x W`` -> ``B x Cout x H x W``."""
        x = self.dec_att(self.relu_in(self.bn_in(self.conv_in(x))))
        out: Tensor = self.bn_out(self.conv_out(x))
        return out


class SimpleConvs(nn.Module):
    """Two 3x3 convs with no activation in between (the image-patch input blocks)."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv_out(self.conv1(x))
        return out


class ConvBnReLU(nn.Module):
    """3x3 conv, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.relu(self.bn(self.conv(x)))
        return out


class Decoder(nn.Module):
    """Levels 4..1 (1/32 .. 1/4 scale), then the full-resolution head.

    Every list is indexed from the deepest level: entry ``i`` serves level ``4 - i``. Each level
    appends ``patch_inputs[i](image2patches(image))`` on its own grid to its input and decodes
    it with ``blocks[i]``. Levels 4..2 then gate the result with
    ``sigmoid(gate_heads[i](gate_convs[i](p)))``, upsample it onto the next encoder skip and add
    ``laterals[i](skip)``. Level 1's output is resized to the image, gets the last image input
    ``patch_inputs[4](image)`` and goes through the 1x1 ``head``. ``side_heads`` and
    ``gradient_heads`` are training-only supervision heads, unused here.
    """

    def __init__(self, config: BiRefNetConfig) -> None:
        super().__init__()
        inter = config.dec_channels
        gated = config.decoder_out_channels[:-1]  # levels 4..2; level 1 has no gate
        # Registration order follows the official state dict (see key_map).
        self.patch_inputs = nn.ModuleList(
            SimpleConvs(cin, cout, inter)
            for cin, cout in zip(config.ipt_in_channels, config.ipt_out_channels, strict=True)
        )
        self.blocks = nn.ModuleList(
            BasicDecBlk(cin, cout, inter, config.aspp_channels)
            for cin, cout in zip(
                config.decoder_in_channels, config.decoder_out_channels, strict=True
            )
        )
        self.head = nn.Conv2d(config.head_in_channels, 1, 1)
        self.laterals = nn.ModuleList(nn.Conv2d(ch, ch, 1) for ch in gated)
        self.side_heads = nn.ModuleList(nn.Conv2d(ch, 1, 1) for ch in gated)
        self.gate_convs = nn.ModuleList(ConvBnReLU(ch, config.gdt_channels) for ch in gated)
        self.gradient_heads = nn.ModuleList(nn.Conv2d(config.gdt_channels, 1, 1) for _ in gated)
        self.gate_heads = nn.ModuleList(nn.Conv2d(config.gdt_channels, 1, 1) for _ in gated)

    def _with_patches(self, x: Tensor, image: Tensor, index: int) -> Tensor:
        """``x`` with ``patch_inputs[index]`` of the image cut into patches on x's grid."""
        patches = image2patches(image, x.shape[-2:])
        return torch.cat([x, self.patch_inputs[index](patches)], dim=1)

    def forward(self, image: Tensor, features: Sequence[Tensor]) -> Tensor:
        """image ``B x 3 x H x W``; features x1..x4 (2C, 4C, 8C at 1/4..1/16, squeezed 16C at
        1/32) -> logits ``B x 1 x H x W``."""
        x1, x2, x3, x4 = features
        x = x4
        for i, skip in enumerate((x3, x2, x1)):
            p = self.blocks[i](self._with_patches(x, image, i))
            p = p * torch.sigmoid(self.gate_heads[i](self.gate_convs[i](p)))
            x = resize(p, skip.shape[-2:]) + self.laterals[i](skip)
        p1 = resize(self.blocks[3](self._with_patches(x, image, 3)), image.shape[-2:])
        logits: Tensor = self.head(self._with_patches(p1, image, 4))
        return logits


class BiRefNet(PreTrainedModel):
    """BiRefNet (ToonOut configuration); ``forward`` returns mask logits.

    Inference only: put the model in ``eval()`` (``from_pretrained`` and the checkpoint loader do).
    """

    config_class = BiRefNetConfig
    config: BiRefNetConfig
    base_model_prefix = "birefnet"
    main_input_name = "pixel_values"
    input_modalities = "image"

    def __init__(self, config: BiRefNetConfig) -> None:
        super().__init__(config)
        self.backbone = SwinTransformer(config)
        self.squeeze = BasicDecBlk(
            config.squeeze_in_channels,
            config.lateral_channels[0],
            config.dec_channels,
            config.aspp_channels,
        )
        self.decoder = Decoder(config)
        self.post_init()  # type: ignore[no-untyped-call]  # untyped in transformers

    def encode(self, pixel_values: Tensor) -> list[Tensor]:
        """``B x 3 x H x W`` -> [x1 2C x H/4, x2 4C x H/8, x3 8C x H/16, x4 16C x H/32].

        The backbone runs on the image and on its half-size copy; each stage output is joined
        with the upsampled half-size one, and x4 additionally gets x1..x3 as context before the
        squeeze block.
        """
        h, w = pixel_values.shape[-2:]
        full = self.backbone(pixel_values)
        half = self.backbone(resize(pixel_values, (h // 2, w // 2)))
        x1, x2, x3, x4 = (
            torch.cat([f, resize(g, f.shape[-2:])], dim=1) for f, g in zip(full, half, strict=True)
        )
        size = x4.shape[-2:]
        context = torch.cat([resize(x1, size), resize(x2, size), resize(x3, size), x4], dim=1)
        return [x1, x2, x3, self.squeeze(context)]

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Mask logits of ImageNet-normalised RGB images.

        pixel_values: ``B x 3 x H x W`` with H and W multiples of 32.
        Returns: ``B x 1 x H x W`` logits; the mask is ``sigmoid(logits)``.
        """
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"expected B x 3 x H x W pixel values, got {tuple(pixel_values.shape)}"
            )
        h, w = pixel_values.shape[-2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h == 0 or w == 0:
            raise ValueError(f"H and W must be positive multiples of {SIZE_MULTIPLE}, got {h}x{w}")
        logits: Tensor = self.decoder(pixel_values, self.encode(pixel_values))
        return logits

    # transformers leaves train/eval untyped and types ``to`` through functools.wraps, which mypy
    # cannot call on an instance; these typed pass-throughs keep callers type-checked.

    def to(self, *args: Any, **kwargs: Any) -> Self:  # type: ignore[override]
        super().to(*args, **kwargs)
        return self

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        return self

    def eval(self) -> Self:
        return self.train(False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Random init for training from scratch: Swin's trunc-normal linears, Kaiming convs,
        identity norms, zero offset/modulator convs (the official init).
        ``transformers.initialization`` leaves loaded tensors alone."""
        # transformers skips modules without parameters of their own (for custom code), so each
        # rule must target the module that owns the tensors.
        if isinstance(module, ZeroInitConv2d):
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                stats = (module.running_mean, module.running_var, module.num_batches_tracked)
                for stat, value in zip(stats, (0, 1, 0), strict=True):
                    if stat is not None:
                        init.constant_(stat, value)
        elif isinstance(module, WindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            index = relative_position_index(module.window_size)
            init.copy_(module.relative_position_index, index)


__all__ = [
    "ASPPDeformable",
    "BasicDecBlk",
    "BiRefNet",
    "ConvBnReLU",
    "Decoder",
    "DeformableBranch",
    "DeformableConv2d",
    "SimpleConvs",
    "image2patches",
    "resize",
]
