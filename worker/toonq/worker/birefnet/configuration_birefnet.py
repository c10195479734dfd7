"""Configuration of BiRefNet in the ToonOut flavour (Swin v1 backbone, ASPPDeformable decoder).

Only the backbone is configurable; every decoder flag is fixed to what ToonOut and BiRefNet-general
were trained with (multi-scale "cat" input, 3 context features, split image patches, deformable
ASPP, gdt gating). The channel formulas of the decoder follow from the backbone width ``C``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PretrainedConfig

# Side of the image-patch grid fed to ipt_blk5..1: one patch per feature pixel at 1/32, 1/16,
# 1/8 and 1/4 scale, then the raw image. Fixed by the architecture, not by the input size.
IPT_PATCH_GRIDS: tuple[int, ...] = (32, 16, 8, 4, 1)

# Input sizes must be multiples of this: the decoder needs whole 32x32 patches at 1/32 scale.
SIZE_MULTIPLE = 32

PRESETS: dict[str, dict[str, Any]] = {
    # BiRefNet_lite (upstream) uses the Swin-T window of 7.
    "swin_v1_t": {
        "embed_dim": 96,
        "depths": (2, 2, 6, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
    },
    "swin_v1_s": {
        "embed_dim": 96,
        "depths": (2, 2, 18, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
    },
    "swin_v1_b": {
        "embed_dim": 128,
        "depths": (2, 2, 18, 2),
        "num_heads": (4, 8, 16, 32),
        "window_size": 12,
    },
    # ToonOut and BiRefNet-general.
    "swin_v1_l": {
        "embed_dim": 192,
        "depths": (2, 2, 18, 2),
        "num_heads": (6, 12, 24, 48),
        "window_size": 12,
    },
    # The birefnet-dev test fixture: ToonOut's decoder on a small backbone.
    "tiny": {
        "embed_dim": 32,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "window_size": 12,
    },
}

PRESET_ALIASES: dict[str, str] = {
    "toonout": "swin_v1_l",
    "general": "swin_v1_l",
    "lite": "swin_v1_t",
}

_BLOCK_KEY = re.compile(r"^bb\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$")


class BiRefNetConfig(PretrainedConfig):  # type: ignore[no-untyped-call]  # untyped __init_subclass__
    """Backbone hyper-parameters plus the fixed decoder widths.

    Args:
        embed_dim: Swin width ``C`` of stage 0; stage ``s`` has ``C * 2**s`` channels.
        depths: number of Swin blocks per stage (4 stages).
        num_heads: attention heads per stage.
        window_size: Swin window side (12 for ToonOut, 7 for Swin-T/S).
        mlp_ratio: hidden width of the Swin MLP relative to the stage width.
        patch_size: side of the patch-embedding convolution.
        dec_channels: inner width of every decoder block (``dec_channels_inter='fixed'``).
        aspp_channels: width of each deformable ASPP branch.
        gdt_channels: width of the gradient-attention (gdt) convs.
        resolution: square input side the weights were trained at (a multiple of 32).
    """

    model_type = "toonq-birefnet"

    def __init__(
        self,
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (6, 12, 24, 48),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        dec_channels: int = 64,
        aspp_channels: int = 256,
        gdt_channels: int = 16,
        resolution: int = 1024,
        **kwargs: Any,
    ) -> None:
        self.embed_dim = int(embed_dim)
        self.depths = [int(d) for d in depths]
        self.num_heads = [int(h) for h in num_heads]
        self.window_size = int(window_size)
        self.mlp_ratio = float(mlp_ratio)
        self.patch_size = int(patch_size)
        self.dec_channels = int(dec_channels)
        self.aspp_channels = int(aspp_channels)
        self.gdt_channels = int(gdt_channels)
        self.resolution = int(resolution)
        self._validate()
        super().__init__(**kwargs)

    def _validate(self) -> None:
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(
                "BiRefNet needs exactly 4 Swin stages (depths and num_heads of length 4)"
            )
        for width, heads in zip(self.stage_channels, self.num_heads, strict=True):
            if heads <= 0 or width % heads:
                raise ValueError(f"stage width {width} is not divisible by {heads} heads")
        if self.embed_dim % 4:
            # ipt_blk1 outputs C/4 channels.
            raise ValueError(f"embed_dim must be a multiple of 4, got {self.embed_dim}")
        if self.window_size < 2:
            raise ValueError(f"window_size must be at least 2, got {self.window_size}")
        if self.resolution <= 0 or self.resolution % SIZE_MULTIPLE:
            raise ValueError(
                f"resolution must be a multiple of {SIZE_MULTIPLE}, got {self.resolution}"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BiRefNetConfig:
        """Config of a named backbone preset (see ``PRESETS`` and ``PRESET_ALIASES``)."""
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            known = sorted([*PRESETS, *PRESET_ALIASES])
            raise KeyError(f"unknown BiRefNet preset {name!r}; known: {', '.join(known)}")
        return cls(**{**PRESETS[key], **overrides})

    # Derived channel lists (names follow the official config.py where it has one).

    @property
    def stage_channels(self) -> list[int]:
        """Swin stage widths ``[C, 2C, 4C, 8C]``."""
        return [self.embed_dim * 2**s for s in range(len(self.depths))]

    @property
    def lateral_channels(self) -> list[int]:
        """Encoder widths after the multi-scale cat, deepest first: ``[16C, 8C, 4C, 2C]``."""
        return [2 * c for c in reversed(self.stage_channels)]

    @property
    def cxt_channels(self) -> list[int]:
        """Context features concatenated onto x4: ``[2C, 4C, 8C]`` (x1, x2, x3)."""
        return self.lateral_channels[1:][::-1]

    @property
    def squeeze_in_channels(self) -> int:
        """Input width of the squeeze block: ``30C``."""
        return sum(self.cxt_channels) + self.lateral_channels[0]

    @property
    def ipt_in_channels(self) -> list[int]:
        """Inputs of ipt_blk5..1: ``3 * G**2`` for the patch grids 32, 16, 8, 4, 1."""
        return [3 * g * g for g in IPT_PATCH_GRIDS]

    @property
    def ipt_out_channels(self) -> list[int]:
        """Outputs of ipt_blk5..1: ``[2C, 2C, C, C/2, C/4]``."""
        lat = self.lateral_channels
        return [lat[0] // 8, lat[0] // 8, lat[1] // 8, lat[2] // 8, lat[3] // 8]

    @property
    def decoder_out_channels(self) -> list[int]:
        """Outputs of decoder_block4..1: ``[8C, 4C, 2C, C]``."""
        lat = self.lateral_channels
        return [lat[1], lat[2], lat[3], lat[3] // 2]

    @property
    def decoder_in_channels(self) -> list[int]:
        """Inputs of decoder_block4..1: ``[18C, 10C, 5C, 2.5C]`` (features + image patches)."""
        return [
            c + p for c, p in zip(self.lateral_channels, self.ipt_out_channels[:4], strict=True)
        ]

    @property
    def head_in_channels(self) -> int:
        """Input of conv_out1: ``1.25C``."""
        return self.decoder_out_channels[-1] + self.ipt_out_channels[-1]


def _first_block_shape(state_dict: Mapping[str, torch.Tensor], stage: int) -> torch.Size:
    return state_dict[f"bb.layers.{stage}.blocks.0.attn.relative_position_bias_table"].shape


def config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], **overrides: Any
) -> BiRefNetConfig:
    """Infer the backbone hyper-parameters from the key names and shapes of an official-layout
    state dict.

    Keys must already be stripped of any ``module.`` / ``_orig_mod.`` prefix. Works on meta tensors.
    """
    try:
        proj = state_dict["bb.patch_embed.proj.weight"].shape
        embed_dim, patch_size = int(proj[0]), int(proj[-1])
        depths = [0, 0, 0, 0]
        for key in state_dict:
            if (match := _BLOCK_KEY.match(key)) is not None:
                stage, block = int(match[1]), int(match[2])
                depths[stage] = max(depths[stage], block + 1)
        tables = [_first_block_shape(state_dict, s) for s in range(4)]
        fc1 = state_dict["bb.layers.0.blocks.0.mlp.fc1.weight"].shape
    except (KeyError, IndexError) as exc:
        raise ValueError(f"not a BiRefNet (Swin v1) state dict: missing or odd key {exc}") from exc
    window_size = (math.isqrt(int(tables[0][0])) + 1) // 2
    if (2 * window_size - 1) ** 2 != tables[0][0]:
        raise ValueError(f"relative_position_bias_table has {tables[0][0]} rows, not (2w-1)^2")
    inferred: dict[str, Any] = {
        "embed_dim": embed_dim,
        "patch_size": patch_size,
        "depths": depths,
        "num_heads": [int(t[1]) for t in tables],
        "window_size": window_size,
        "mlp_ratio": fc1[0] / embed_dim,
    }
    return BiRefNetConfig(**{**inferred, **overrides})
