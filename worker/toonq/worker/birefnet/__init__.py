"""BiRefNet (ToonOut configuration) in plain PyTorch, loadable from the official checkpoints."""

from .checkpoint import (
    StateDictMismatchError,
    load_birefnet_checkpoint,
    load_birefnet_state_dict,
    strip_checkpoint_prefixes,
)
from .configuration_birefnet import PRESETS, BiRefNetConfig, config_from_state_dict
from .deform_conv import deform_conv2d, deform_conv2d_torch
from .key_map import to_model_key, to_model_state_dict, to_official_key, to_official_state_dict
from .modeling_birefnet import BiRefNet

__all__ = [
    "PRESETS",
    "BiRefNet",
    "BiRefNetConfig",
    "StateDictMismatchError",
    "config_from_state_dict",
    "deform_conv2d",
    "deform_conv2d_torch",
    "load_birefnet_checkpoint",
    "load_birefnet_state_dict",
    "strip_checkpoint_prefixes",
    "to_model_key",
    "to_model_state_dict",
    "to_official_key",
    "to_official_state_dict",
]
