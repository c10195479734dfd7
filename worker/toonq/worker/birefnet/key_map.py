"""The official BiRefNet checkpoint's key names and this model's, both ways.

The official code names its decoder modules by level number (``decoder.ipt_blk5`` ..
``decoder.ipt_blk1``, ``decoder.gdt_convs_attn_4``, ...) and the backbone's stage-output norms
``bb.norm0`` .. ``bb.norm3``; this model holds them in lists indexed from the deepest level. A key
is renamed by its module prefix only: the longest prefix (a whole number of dotted parts) listed
below is replaced and the rest of the key is kept, so the block internals keep the official names.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

# The official level number of each entry of the decoder's lists (deepest first).
_PATCH_INPUT_LEVELS = (5, 4, 3, 2, 1)
_DECODER_LEVELS = (4, 3, 2, 1)
_GATED_LEVELS = (4, 3, 2)
_SWIN_STAGES = 4


def _module_renames() -> dict[str, str]:
    """Official module path -> this model's module path."""
    renames = {
        "bb": "backbone",
        "squeeze_module.0": "squeeze",
        "decoder.conv_out1.0": "decoder.head",
    }
    renames |= {f"bb.norm{s}": f"backbone.output_norms.{s}" for s in range(_SWIN_STAGES)}
    for i, level in enumerate(_PATCH_INPUT_LEVELS):
        renames[f"decoder.ipt_blk{level}"] = f"decoder.patch_inputs.{i}"
    for i, level in enumerate(_DECODER_LEVELS):
        renames[f"decoder.decoder_block{level}"] = f"decoder.blocks.{i}"
    for i, level in enumerate(_GATED_LEVELS):
        renames |= {
            f"decoder.lateral_block{level}.conv": f"decoder.laterals.{i}",
            f"decoder.conv_ms_spvn_{level}": f"decoder.side_heads.{i}",
            f"decoder.gdt_convs_{level}.0": f"decoder.gate_convs.{i}.conv",
            f"decoder.gdt_convs_{level}.1": f"decoder.gate_convs.{i}.bn",
            f"decoder.gdt_convs_pred_{level}.0": f"decoder.gradient_heads.{i}",
            f"decoder.gdt_convs_attn_{level}.0": f"decoder.gate_heads.{i}",
        }
    return renames


_OFFICIAL_TO_MODEL: dict[str, str] = _module_renames()
_MODEL_TO_OFFICIAL: dict[str, str] = {new: old for old, new in _OFFICIAL_TO_MODEL.items()}


def _rename(key: str, renames: Mapping[str, str], layout: str) -> str:
    # Longest prefix first: ``bb.norm0`` has a rename of its own inside ``bb``.
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in renames:
            return ".".join([renames[prefix], *parts[n:]])
    raise KeyError(f"{key!r} is not a key of the {layout} BiRefNet layout")


def to_model_key(official_key: str) -> str:
    """This model's name for an official key, e.g. ``decoder.ipt_blk5.conv1.weight`` ->
    ``decoder.patch_inputs.0.conv1.weight``. Raises ``KeyError`` outside the official modules."""
    return _rename(official_key, _OFFICIAL_TO_MODEL, "official")


def to_official_key(model_key: str) -> str:
    """The official name of one of this model's keys (the inverse of :func:`to_model_key`)."""
    return _rename(model_key, _MODEL_TO_OFFICIAL, "toonq")


def to_model_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official-layout state dict (prefixes already stripped) with this model's key names, in
    the same order (timm's ``checkpoint_filter_fn``)."""
    return {to_model_key(key): value for key, value in state_dict.items()}


def to_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """This model's state dict with the official key names, in the same order."""
    return {to_official_key(key): value for key, value in state_dict.items()}
