"""The birefnet-dev fixture (`tests/data/birefnet-dev`): a small BiRefNet in ToonOut's
configuration, its deterministic weights and the reference implementation's outputs (fp32, CPU).

The weights are not shipped: they are generated from the fixture's key manifest by the rule of
its RECIPE.md. Every tensor draws from its own PCG64 stream seeded with ``[SALT, crc32(key)]``;
values are computed in float64 and rounded to float32 once. The unit tests compare toonq's model
with the reference outputs on the CPU, `toonq gpu-check` on a GPU.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from toonq.worker.birefnet import BiRefNet, load_birefnet_state_dict

#: Where the fixture lives in the repository, relative to its root.
FIXTURE_DIR = Path("tests/data/birefnet-dev")
#: The tags of its inputs and outputs: `input_TAG.npy`, `logits_TAG.npy`, `mask_TAG.npy`.
REFERENCE_TAGS = ("128x128", "128x192")
#: Largest absolute differences from the reference outputs that a correct fp32 implementation
#: stays within (the fixture's README; correct ones measure <= 6e-5 and <= 1.4e-5).
LOGITS_TOLERANCE = 1e-3
MASK_TOLERANCE = 1e-4

Array = npt.NDArray[Any]

RECIPE_SHA256 = "960428802a2ba18d5e159cd2e2b2ce2dfae388059ca6fcc914683b415d2d6a11"
SALT = 7

PINNED = {
    "decoder.gdt_convs_attn_4.0.bias": 0.0666,
    "decoder.gdt_convs_attn_3.0.bias": -0.00633,
    "decoder.gdt_convs_attn_2.0.bias": 4.57,
}
OUT_GAIN, OUT_BIAS = 2.61, 1.27

BN_INPUT_SCALE = {
    "squeeze_module.0.bn_in": 0.573,
    "squeeze_module.0.dec_att.aspp1.bn": 0.351,
    "squeeze_module.0.dec_att.aspp_deforms.0.bn": 0.711,
    "squeeze_module.0.dec_att.aspp_deforms.1.bn": 0.495,
    "squeeze_module.0.dec_att.aspp_deforms.2.bn": 0.411,
    "squeeze_module.0.dec_att.global_avg_pool.2": 0.763,
    "squeeze_module.0.dec_att.bn1": 0.71,
    "squeeze_module.0.bn_out": 0.729,
    "decoder.decoder_block4.bn_in": 1.05,
    "decoder.decoder_block4.dec_att.aspp1.bn": 0.273,
    "decoder.decoder_block4.dec_att.aspp_deforms.0.bn": 0.835,
    "decoder.decoder_block4.dec_att.aspp_deforms.1.bn": 0.419,
    "decoder.decoder_block4.dec_att.aspp_deforms.2.bn": 0.443,
    "decoder.decoder_block4.dec_att.global_avg_pool.2": 0.887,
    "decoder.decoder_block4.dec_att.bn1": 0.668,
    "decoder.decoder_block4.bn_out": 0.844,
    "decoder.gdt_convs_4.1": 1.03,
    "decoder.decoder_block3.bn_in": 0.731,
    "decoder.decoder_block3.dec_att.aspp1.bn": 0.936,
    "decoder.decoder_block3.dec_att.aspp_deforms.0.bn": 0.777,
    "decoder.decoder_block3.dec_att.aspp_deforms.1.bn": 0.984,
    "decoder.decoder_block3.dec_att.aspp_deforms.2.bn": 0.828,
    "decoder.decoder_block3.dec_att.global_avg_pool.2": 1.06,
    "decoder.decoder_block3.dec_att.bn1": 0.65,
    "decoder.decoder_block3.bn_out": 0.759,
    "decoder.gdt_convs_3.1": 1.05,
    "decoder.decoder_block2.bn_in": 0.791,
    "decoder.decoder_block2.dec_att.aspp1.bn": 0.702,
    "decoder.decoder_block2.dec_att.aspp_deforms.0.bn": 0.433,
    "decoder.decoder_block2.dec_att.aspp_deforms.1.bn": 0.733,
    "decoder.decoder_block2.dec_att.aspp_deforms.2.bn": 0.776,
    "decoder.decoder_block2.dec_att.global_avg_pool.2": 0.982,
    "decoder.decoder_block2.dec_att.bn1": 0.665,
    "decoder.decoder_block2.bn_out": 0.876,
    "decoder.gdt_convs_2.1": 1.18,
    "decoder.decoder_block1.bn_in": 0.979,
    "decoder.decoder_block1.dec_att.aspp1.bn": 0.237,
    "decoder.decoder_block1.dec_att.aspp_deforms.0.bn": 0.56,
    "decoder.decoder_block1.dec_att.aspp_deforms.1.bn": 0.574,
    "decoder.decoder_block1.dec_att.aspp_deforms.2.bn": 0.713,
    "decoder.decoder_block1.dec_att.global_avg_pool.2": 0.781,
    "decoder.decoder_block1.dec_att.bn1": 0.625,
    "decoder.decoder_block1.bn_out": 0.705,
}


@dataclass(frozen=True)
class KeySpec:
    """One row of a ``keys.tsv`` manifest."""

    key: str
    shape: tuple[int, ...]
    dtype: str  # "float32" or "int64"


def read_keys(path: Path) -> list[KeySpec]:
    rows = path.read_text().splitlines()[1:]
    specs = []
    for row in rows:
        key, shape, dtype, *_ = row.split("\t")
        dims = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
        specs.append(KeySpec(key, dims, dtype))
    return specs


def _uniform01(key: str, n: int) -> Array:
    crc = zlib.crc32(key.encode("utf-8"))
    raw = np.random.PCG64([SALT, crc]).random_raw(n)
    return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _u(key: str, shape: tuple[int, ...], mean: float, std: float) -> Array:
    if std == 0:
        return np.full(shape, mean, dtype=np.float32)
    u = _uniform01(key, math.prod(shape)).reshape(shape)
    a = std * math.sqrt(3.0)
    return (mean + a * (2.0 * u - 1.0)).astype(np.float32)


def _r(key: str, shape: tuple[int, ...], lo: float, hi: float) -> Array:
    u = _uniform01(key, math.prod(shape)).reshape(shape)
    return (lo + (hi - lo) * u).astype(np.float32)


def _relative_position_index(ws: int) -> Array:
    yi, xi = np.divmod(np.arange(ws * ws), ws)
    dy = yi[:, None] - yi[None, :] + ws - 1
    dx = xi[:, None] - xi[None, :] + ws - 1
    index: Array = (dy * (2 * ws - 1) + dx).astype(np.int64)
    return index


def _value(spec: KeySpec, bn_modules: set[str]) -> Array:
    key, shape = spec.key, spec.shape
    module, leaf = key.rsplit(".", 1)
    fan_in = math.prod(shape[1:])
    if spec.dtype == "int64" and key.endswith(".relative_position_index"):
        return _relative_position_index(math.isqrt(shape[0]))
    if spec.dtype == "int64" and key.endswith(".num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    if key in PINNED:
        return _u(key, shape, PINNED[key], 0.0)
    if module in bn_modules:
        sc = BN_INPUT_SCALE.get(module, 1.0)
        if leaf == "weight":
            return _u(key, shape, 1.0, 0.2)
        if leaf == "bias":
            return _u(key, shape, 0.0, 0.1)
        if leaf == "running_mean":
            return _u(key, shape, 0.0, 0.3 * sc)
        return _r(key, shape, 0.5 * sc * sc, 1.5 * sc * sc)
    if leaf == "relative_position_bias_table":
        return _u(key, shape, 0.0, 0.5)
    if len(shape) == 1 and module.rsplit(".", 1)[-1].startswith("norm"):
        return _u(key, shape, 1.0, 0.1) if leaf == "weight" else _u(key, shape, 0.0, 0.05)
    if module.endswith("offset_conv"):
        return (
            _u(key, shape, 0.0, 0.7 / math.sqrt(fan_in))
            if leaf == "weight"
            else _u(key, shape, 0.0, 0.5)
        )
    if module.endswith("modulator_conv"):
        return (
            _u(key, shape, 0.0, 1.0 / math.sqrt(fan_in))
            if leaf == "weight"
            else _u(key, shape, 0.0, 0.7)
        )
    if module.startswith("decoder.gdt_convs_attn_"):
        return (
            _u(key, shape, 0.0, 3.0 / math.sqrt(fan_in))
            if leaf == "weight"
            else _u(key, shape, 0.0, 0.5)
        )
    if module == "decoder.conv_out1.0":
        return (
            _u(key, shape, 0.0, OUT_GAIN / math.sqrt(fan_in))
            if leaf == "weight"
            else _u(key, shape, OUT_BIAS, 0.0)
        )
    if leaf == "weight" and len(shape) >= 2:
        return _u(key, shape, 0.0, 1.0 / math.sqrt(fan_in))
    if leaf == "bias" and len(shape) == 1:
        return _u(key, shape, 0.0, 0.1 if module.endswith(".qkv") else 0.05)
    raise ValueError(f"no recipe rule for {key}")


def generate_weights(keys_tsv: Path) -> dict[str, Array]:
    """The fixture's state dict as numpy arrays, in manifest order."""
    specs = read_keys(keys_tsv)
    bn_modules = {s.key.rsplit(".", 1)[0] for s in specs if s.key.endswith(".running_mean")}
    return {s.key: _value(s, bn_modules) for s in specs}


def sha256_of(arrays: Mapping[str, Array]) -> str:
    """RECIPE.md section 5: header line then little-endian bytes, per key in order."""
    digest = hashlib.sha256()
    for key, array in arrays.items():
        dtype = {np.dtype(np.float32): "<f4", np.dtype(np.int64): "<i8"}[array.dtype]
        digest.update(f"{key}\t{dtype}\t{list(array.shape)}\n".encode())
        digest.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def fixture_model(fixture_dir: Path = FIXTURE_DIR) -> BiRefNet:
    """The fixture's model with its generated weights, in eval mode on the CPU."""
    weights = generate_weights(fixture_dir / "keys.tsv")
    return load_birefnet_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})


@dataclass(frozen=True)
class ReferenceOutput:
    """One input of the fixture and the reference implementation's outputs for it."""

    tag: str
    #: 1x3xHxW float32, already ImageNet-normalised: fed to the model as it is.
    model_input: torch.Tensor
    #: 1x1xHxW float32 mask logits and their sigmoid.
    logits: torch.Tensor
    mask: torch.Tensor


def reference_outputs(fixture_dir: Path = FIXTURE_DIR) -> list[ReferenceOutput]:
    def load(name: str, tag: str) -> torch.Tensor:
        return torch.from_numpy(np.load(fixture_dir / f"{name}_{tag}.npy"))

    return [
        ReferenceOutput(tag, load("input", tag), load("logits", tag), load("mask", tag))
        for tag in REFERENCE_TAGS
    ]
