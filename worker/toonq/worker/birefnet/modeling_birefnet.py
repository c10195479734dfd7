"""BiRefNet as trained for ToonOut: Swin v1 encoder run at full and half resolution, context
squeeze, and a 4-level decoder with deformable ASPP blocks, image-patch inputs and gdt gating.

Module and attribute names mirror the official checkpoint keys, so ``state_dict()`` equals the
ToonOut key list (after stripping ``module._orig_mod.``). Inference only: the model computes the
eval path (BatchNorm with running statistics, dropout and drop-path as identity) and must be used
in ``eval()`` mode; the training-only heads exist solely so that checkpoints load strictly.
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


def _run(module: nn.Module, x: Tensor) -> Tensor:
    """Call a submodule looked up by name (``get_submodule``) with a typed result."""
    out: Tensor = module(x)
    return out


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


class BasicLatBlk(nn.Module):
    """1x1 conv on an encoder skip feature."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out


class Decoder(nn.Module):
    """Levels 4..1 (1/32 .. 1/4 scale), then the full-resolution head.

    Level ``l`` (4, 3, 2) decodes, gates with ``sigmoid(gdt_convs_attn_l(gdt_convs_l(p)))``,
    upsamples onto the next skip, adds ``lateral_block_l(skip)`` and appends
    ``ipt_blk_l(image2patches(image))``. Level 1 has no gate; its output is resized to the
    image and joined with ``ipt_blk1(image)`` before ``conv_out1``.
    ``conv_ms_spvn_*`` and ``gdt_convs_pred_*`` are training-only heads, unused here.
    """

    def __init__(self, config: BiRefNetConfig) -> None:
        super().__init__()
        inter = config.dec_channels
        # Registration order = the official state-dict order.
        for level, cin, cout in zip(
            (5, 4, 3, 2, 1), config.ipt_in_channels, config.ipt_out_channels, strict=True
        ):
            self.add_module(f"ipt_blk{level}", SimpleConvs(cin, cout, inter))
        for level, cin, cout in zip(
            (4, 3, 2, 1), config.decoder_in_channels, config.decoder_out_channels, strict=True
        ):
            block = BasicDecBlk(cin, cout, inter, config.aspp_channels)
            self.add_module(f"decoder_block{level}", block)
        self.conv_out1 = nn.Sequential(nn.Conv2d(config.head_in_channels, 1, 1))
        gated = list(zip((4, 3, 2), config.decoder_out_channels[:3], strict=True))
        gdt = config.gdt_channels
        for level, ch in gated:
            self.add_module(f"lateral_block{level}", BasicLatBlk(ch, ch))
        for level, ch in gated:
            self.add_module(f"conv_ms_spvn_{level}", nn.Conv2d(ch, 1, 1))
        for level, ch in gated:
            gdt_convs = nn.Sequential(
                nn.Conv2d(ch, gdt, 3, padding=1), nn.BatchNorm2d(gdt), nn.ReLU(inplace=True)
            )
            self.add_module(f"gdt_convs_{level}", gdt_convs)
        for level, _ in gated:
            self.add_module(f"gdt_convs_pred_{level}", nn.Sequential(nn.Conv2d(gdt, 1, 1)))
        for level, _ in gated:
            self.add_module(f"gdt_convs_attn_{level}", nn.Sequential(nn.Conv2d(gdt, 1, 1)))

    def _sub(self, name: str, x: Tensor) -> Tensor:
        return _run(self.get_submodule(name), x)

    def _patches(self, level: int, image: Tensor, size: Sequence[int]) -> Tensor:
        return self._sub(f"ipt_blk{level}", image2patches(image, size))

    def forward(self, image: Tensor, features: Sequence[Tensor]) -> Tensor:
        """image ``B x 3 x H x W``; features x1..x4 (2C, 4C, 8C at 1/4..1/16, squeezed 16C at
        1/32) -> logits ``B x 1 x H x W``."""
        x1, x2, x3, x4 = features
        t = torch.cat([x4, self._patches(5, image, x4.shape[-2:])], dim=1)
        for level, skip in ((4, x3), (3, x2), (2, x1)):
            p = self._sub(f"decoder_block{level}", t)
            gate = self._sub(f"gdt_convs_attn_{level}", self._sub(f"gdt_convs_{level}", p))
            p = p * torch.sigmoid(gate)
            t = resize(p, skip.shape[-2:]) + self._sub(f"lateral_block{level}", skip)
            t = torch.cat([t, self._patches(level, image, skip.shape[-2:])], dim=1)
        p1 = resize(self._sub("decoder_block1", t), image.shape[-2:])
        t = torch.cat([p1, self._patches(1, image, image.shape[-2:])], dim=1)
        return self._sub("conv_out1", t)


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
        self.bb = SwinTransformer(config)
        squeeze = BasicDecBlk(
            config.squeeze_in_channels,
            config.lateral_channels[0],
            config.dec_channels,
            config.aspp_channels,
        )
        self.squeeze_module = nn.Sequential(squeeze)
        self.decoder = Decoder(config)
        self.post_init()  # type: ignore[no-untyped-call]  # untyped in transformers

    def encode(self, pixel_values: Tensor) -> list[Tensor]:
        """``B x 3 x H x W`` -> [x1 2C x H/4, x2 4C x H/8, x3 8C x H/16, x4 16C x H/32].

        The backbone runs on the image and on its half-size copy; each stage output is joined
        with the upsampled half-size one, and x4 additionally gets x1..x3 as context before the
        squeeze block.
        """
        h, w = pixel_values.shape[-2:]
        full = self.bb(pixel_values)
        half = self.bb(resize(pixel_values, (h // 2, w // 2)))
        x1, x2, x3, x4 = (
            torch.cat([f, resize(g, f.shape[-2:])], dim=1) for f, g in zip(full, half, strict=True)
        )
        size = x4.shape[-2:]
        context = torch.cat([resize(x1, size), resize(x2, size), resize(x3, size), x4], dim=1)
        return [x1, x2, x3, _run(self.squeeze_module, context)]

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
    "BasicLatBlk",
    "BiRefNet",
    "Decoder",
    "DeformableBranch",
    "DeformableConv2d",
    "SimpleConvs",
    "image2patches",
    "resize",
]
