"""Swin Transformer v1, detection/segmentation variant: BiRefNet's backbone (official ``bb.*``).

Differences from the classification Swin that matter for exact outputs: inputs of any size are
zero-padded (image to the patch size, token grids to the window size, after ``norm1`` and without
masking the padded tokens), the window is never shrunk for small grids, shifted blocks mask
token pairs from different regions, and every stage output goes through its own LayerNorm
(``output_norms``).

Token grids are kept channel-last, ``B x H x W x C``, which is the official ``B x (H*W) x C``
sequence viewed as a grid.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration_birefnet import BiRefNetConfig

# Additive logit for token pairs from different regions of a shifted window. ToonOut's code used
# -100, upstream now uses -inf: the softmax is the same (exp(-100) is below float32's normal
# range), but -100 leaves denormal probabilities that slow CPU matmuls down several times.
SHIFT_MASK_VALUE = float("-inf")


def relative_position_index(window_size: int) -> Tensor:
    """``[ws*ws, ws*ws]`` int64 bias-table index ``(yi-yj+ws-1)*(2ws-1) + (xi-xj+ws-1)``."""
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window_size - 1
    dx = xs[:, None] - xs[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """``B x Hp x Wp x C`` -> ``(B*nW) x ws*ws x C``, windows batch-major then row-major."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B*nW) x ws*ws x C`` -> ``B x H x W x C``."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, height // ws, width // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


@functools.lru_cache(maxsize=16)
def shift_mask(
    height: int, width: int, window_size: int, shift: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Additive mask ``nW x N x N`` of the shifted windows of a padded ``height x width`` grid.

    After the cyclic shift, the last window row/column holds tokens from up to three regions per
    axis that are not neighbours in the image; pairs from different regions are masked out (every
    token keeps at least itself, so no row is fully masked). Cached because every shifted block
    of a stage, and every forward at the same size, reuses it: the returned tensor is shared and
    must not be modified in place.
    """

    def bands(size: int) -> Tensor:
        labels = torch.zeros(size, dtype=torch.long)
        labels[size - window_size : size - shift] = 1
        labels[size - shift :] = 2
        return labels

    region = (bands(height)[:, None] * 3 + bands(width)[None, :])[None, :, :, None]
    ids = window_partition(region, window_size).squeeze(-1)
    different = ids[:, :, None] != ids[:, None, :]
    mask = torch.zeros(different.shape).masked_fill(different, SHIFT_MASK_VALUE)
    return mask.to(device=device, dtype=dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; pads the image right/bottom to a whole patch."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``B x 3 x H x W`` -> ``B x ceil(H/p) x ceil(W/p) x C``."""
        pad_h, pad_w = (-x.shape[-2]) % self.patch_size, (-x.shape[-1]) % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        tokens: Tensor = self.norm(self.proj(x).permute(0, 2, 3, 1))
        return tokens


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    relative_position_index: Tensor

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Persistent: the official checkpoints contain it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: Tensor, mask: Tensor | None = None) -> Tensor:
        """windows ``(B*nW) x N x C``, additive mask ``nW x N x N`` or None -> same as windows."""
        bw, n, c = windows.shape
        qkv = self.qkv(windows).view(bw, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        index = self.relative_position_index.view(-1)
        attn_mask = self.relative_position_bias_table[index].view(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            per_window = attn_mask[None] + mask[:, None]
            # Windows are batch-major: repeat the per-window mask for each image (no copy if B=1).
            attn_mask = per_window.expand(bw // nw, -1, -1, -1, -1).reshape(bw, -1, n, n)
        # SDPA matches the official explicit softmax(q k^T * scale + bias) @ v to ~1e-6 and uses
        # fused kernels; its mask must be in q's dtype, which differs from the parameters' under
        # autocast.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask.to(q.dtype), scale=self.head_dim**-0.5
        )
        projected: Tensor = self.proj(out.transpose(1, 2).reshape(bw, n, c))
        return projected


class Mlp(nn.Module):
    """``fc1`` -> exact GELU -> ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention + MLP, both residual."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x ``B x H x W x C``; mask: :func:`shift_mask` of the padded grid (used if shifted)."""
        _, h, w, _ = x.shape
        ws, shift = self.window_size, self.shift_size
        y = self.norm1(x)
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h or pad_w:
            # Zeros after norm1 and not masked: padded keys still contribute qkv.bias, as upstream.
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(window_partition(y, ws), mask if shift else None)
        y = window_reverse(y, ws, h + pad_h, w + pad_w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y[:, :h, :w]
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class PatchMerging(nn.Module):
    """2x2 space-to-depth (order: (0,0), (1,0), (0,1), (1,1)), LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        """``B x H x W x C`` -> ``B x ceil(H/2) x ceil(W/2) x 2C``."""
        h, w = x.shape[1], x.shape[2]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        parts = (x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2])
        out: Tensor = self.reduction(self.norm(torch.cat(parts, dim=-1)))
        return out


class SwinStage(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, self.shift_size if i % 2 else 0, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x ``B x H x W x C`` -> (stage output ``B x H x W x C``, input of the next stage)."""
        ws = self.window_size
        mask: Tensor | None = None
        if len(self.blocks) > 1:
            hp, wp = -(-x.shape[1] // ws) * ws, -(-x.shape[2] // ws) * ws
            mask = shift_mask(hp, wp, ws, self.shift_size, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x, x if self.downsample is None else self.downsample(x)


class SwinTransformer(nn.Module):
    """Backbone returning the 4 normed stage outputs ``B x C_s x H/4/2^s x W/4/2^s``."""

    def __init__(self, config: BiRefNetConfig) -> None:
        super().__init__()
        widths = config.stage_channels
        self.patch_embed = PatchEmbed(3, config.embed_dim, config.patch_size)
        self.layers = nn.ModuleList(
            SwinStage(
                width,
                depth,
                heads,
                config.window_size,
                config.mlp_ratio,
                downsample=s < len(widths) - 1,
            )
            for s, (width, depth, heads) in enumerate(
                zip(widths, config.depths, config.num_heads, strict=True)
            )
        )
        self.output_norms = nn.ModuleList(nn.LayerNorm(width) for width in widths)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``B x 3 x H x W`` -> ``[B x C x H/4 x W/4, ..., B x 8C x H/32 x W/32]``."""
        x = self.patch_embed(x)
        features = []
        for stage, norm in zip(self.layers, self.output_norms, strict=True):
            out, x = stage(x)
            features.append(norm(out).permute(0, 3, 1, 2).contiguous())
        return features
