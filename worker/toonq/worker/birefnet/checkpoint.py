"""Loading bare BiRefNet state dicts such as ToonOut's ``birefnet_finetuned_toonout.pth``.

Those files are plain ``torch.save`` dicts whose keys carry the wrappers of training
(``module.`` from DDP, ``_orig_mod.`` from ``torch.compile``) and come without a config, so the
config is inferred from the key shapes. Their keys have the official names, which
:mod:`.key_map` turns into the model's. Directories written by ``save_pretrained`` hold the
model's own names and load with ``BiRefNet.from_pretrained`` instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from .configuration_birefnet import BiRefNetConfig, config_from_state_dict
from .key_map import to_model_state_dict, to_official_state_dict
from .modeling_birefnet import BiRefNet

# How many offending keys an error message lists.
_KEYS_SHOWN = 5


class StateDictMismatchError(ValueError):
    """The state dict does not have exactly the official keys and shapes of the model."""


def strip_checkpoint_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop a leading ``module.`` then a leading ``_orig_mod.`` from every key (as the official
    ``check_state_dict`` does)."""
    stripped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key.removeprefix("module.").removeprefix("_orig_mod.")
        if name in stripped:
            raise StateDictMismatchError(f"two keys map to {name!r} once prefixes are stripped")
        stripped[name] = value
    return stripped


def _listing(label: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else ""
    return f"{label} ({len(keys)}): {', '.join(keys[:_KEYS_SHOWN])}{more}"


def _check_matches(model: BiRefNet, state_dict: Mapping[str, Tensor]) -> None:
    """Compare in the official names, the ones a checkpoint's user knows."""
    expected = to_official_state_dict(model.state_dict())
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = [
        _listing(label, keys)
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise StateDictMismatchError("state dict does not match BiRefNet: " + "; ".join(problems))


def load_birefnet_state_dict(
    state_dict: Mapping[str, Tensor], config: BiRefNetConfig | None = None
) -> BiRefNet:
    """Build a BiRefNet holding ``state_dict``'s tensors (no copy) and return it in eval mode.

    ``state_dict`` has the official key names (ToonOut's and upstream BiRefNet's). Prefixes are
    stripped first; the config is inferred from the keys when not given. The model is built on
    the meta device and the tensors are assigned, so an 885 MB checkpoint is not allocated twice.
    Raises :class:`StateDictMismatchError` on missing, unexpected or misshapen keys, named as in
    the official layout.
    """
    weights = strip_checkpoint_prefixes(state_dict)
    if config is None:
        config = config_from_state_dict(weights)
    with torch.device("meta"):
        model = BiRefNet(config)
    _check_matches(model, weights)
    model.load_state_dict(to_model_state_dict(weights), strict=True, assign=True)
    return model.eval()


def load_birefnet_checkpoint(
    path: str | os.PathLike[str],
    config: BiRefNetConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> BiRefNet:
    """Load a ``.pth`` (``torch.save`` state dict) or ``.safetensors`` file into a BiRefNet."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights: Mapping[str, Tensor] = load_file(path, device=str(map_location))
    else:
        # mmap keeps the file's pages shared instead of reading a second copy into memory.
        weights = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    return load_birefnet_state_dict(weights, config)
