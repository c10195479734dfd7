"""State-dict layout of the presets, config inference and the bare-checkpoint loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.birefnet_recipe import FIXTURE, TOONOUT_KEYS, read_keys
from toonq.worker.birefnet import (
    BiRefNet,
    BiRefNetConfig,
    StateDictMismatchError,
    config_from_state_dict,
    load_birefnet_checkpoint,
    load_birefnet_state_dict,
    to_model_key,
    to_model_state_dict,
    to_official_key,
    to_official_state_dict,
)

BACKBONE_FIELDS = ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "patch_size")


def _meta_model(preset: str) -> BiRefNet:
    with torch.device("meta"):
        return BiRefNet(BiRefNetConfig.from_preset(preset))


def _backbone(config: BiRefNetConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in BACKBONE_FIELDS}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    """A random tiny model's weights in the official layout, as a checkpoint file holds them."""
    torch.manual_seed(0)
    return to_official_state_dict(BiRefNet(BiRefNetConfig.from_preset("tiny")).state_dict())


def test_toonout_preset_has_exactly_the_checkpoint_keys() -> None:
    state = to_official_state_dict(_meta_model("toonout").state_dict())
    manifest = read_keys(TOONOUT_KEYS)
    assert len(manifest) == 754
    assert list(state) == [spec.key for spec in manifest]
    for spec in manifest:
        tensor = state[spec.key]
        assert tuple(tensor.shape) == spec.shape, spec.key
        assert tensor.dtype == getattr(torch, spec.dtype), spec.key


def test_toonout_sizes_match_the_reference() -> None:
    model = _meta_model("swin_v1_l")
    assert sum(p.numel() for p in model.parameters()) == 220_176_498
    assert sum(b.numel() for b in model.buffers()) == 523_787


def test_toonout_channel_formulas() -> None:
    config = BiRefNetConfig.from_preset("toonout")
    assert config.lateral_channels == [3072, 1536, 768, 384]
    assert config.cxt_channels == [384, 768, 1536]
    assert config.squeeze_in_channels == 5760
    assert config.ipt_in_channels == [3072, 768, 192, 48, 3]
    assert config.ipt_out_channels == [384, 384, 192, 96, 48]
    assert config.decoder_in_channels == [3456, 1920, 960, 480]
    assert config.decoder_out_channels == [1536, 768, 384, 192]
    assert config.head_in_channels == 240


def test_tiny_channels_match_fixture_config() -> None:
    derived = json.loads((FIXTURE / "config.json").read_text())["derived_channels"]
    config = BiRefNetConfig.from_preset("tiny")
    assert config.lateral_channels == derived["lateral_channels_in_collection"]
    assert config.cxt_channels == derived["cxt"]
    assert [config.squeeze_in_channels, config.lateral_channels[0]] == derived["squeeze_in_out"]
    assert config.ipt_in_channels == derived["ipt_blk_in_5_4_3_2_1"]
    assert config.ipt_out_channels == derived["ipt_blk_out_5_4_3_2_1"]
    assert config.decoder_in_channels == derived["decoder_block_in_4_3_2_1"]
    assert config.decoder_out_channels == derived["decoder_block_out_4_3_2_1"]
    assert config.head_in_channels == derived["conv_out1_in"]


def test_lite_preset_uses_window_7() -> None:
    state = _meta_model("lite").state_dict()
    assert state["backbone.layers.0.blocks.0.attn.relative_position_index"].shape == (49, 49)
    assert state["backbone.layers.3.blocks.1.attn.relative_position_bias_table"].shape == (169, 24)
    assert state["backbone.patch_embed.proj.weight"].shape == (96, 3, 4, 4)


def test_key_map_is_a_bijection_over_the_official_keys() -> None:
    official = [spec.key for spec in read_keys(TOONOUT_KEYS)]
    renamed = [to_model_key(key) for key in official]
    assert len(set(renamed)) == len(official) == 754
    assert [to_official_key(key) for key in renamed] == official
    model = _meta_model("toonout")
    named = [name for name, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert sorted(named) == sorted(renamed)


def test_key_map_renames_the_numbered_modules() -> None:
    expected = {
        "bb.norm3.weight": "backbone.output_norms.3.weight",
        "bb.layers.2.blocks.17.attn.qkv.bias": "backbone.layers.2.blocks.17.attn.qkv.bias",
        "squeeze_module.0.dec_att.bn1.weight": "squeeze.dec_att.bn1.weight",
        "decoder.ipt_blk5.conv1.weight": "decoder.patch_inputs.0.conv1.weight",
        "decoder.ipt_blk1.conv_out.bias": "decoder.patch_inputs.4.conv_out.bias",
        "decoder.decoder_block1.conv_in.weight": "decoder.blocks.3.conv_in.weight",
        "decoder.conv_out1.0.weight": "decoder.head.weight",
        "decoder.lateral_block2.conv.bias": "decoder.laterals.2.bias",
        "decoder.conv_ms_spvn_4.weight": "decoder.side_heads.0.weight",
        "decoder.gdt_convs_3.0.weight": "decoder.gate_convs.1.conv.weight",
        "decoder.gdt_convs_3.1.running_var": "decoder.gate_convs.1.bn.running_var",
        "decoder.gdt_convs_pred_2.0.bias": "decoder.gradient_heads.2.bias",
        "decoder.gdt_convs_attn_4.0.weight": "decoder.gate_heads.0.weight",
    }
    assert {key: to_model_key(key) for key in expected} == expected
    with pytest.raises(KeyError, match="official"):
        to_model_key("decoder.refiner.weight")
    with pytest.raises(KeyError, match="toonq"):
        to_official_key("bb.patch_embed.proj.weight")


def test_an_official_layout_state_dict_loads_strictly() -> None:
    """The 754 official keys, as meta tensors, fill every parameter and buffer of the model."""
    official = {
        spec.key: torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device="meta")
        for spec in read_keys(TOONOUT_KEYS)
    }
    model = load_birefnet_state_dict(official)
    assert _backbone(model.config) == _backbone(BiRefNetConfig.from_preset("toonout"))
    loaded = model.state_dict(keep_vars=True)
    assert list(loaded) == list(to_model_state_dict(official))
    for key, tensor in official.items():
        assert loaded[to_model_key(key)].shape == tensor.shape, key


@pytest.mark.parametrize("preset", ["tiny", "lite", "swin_v1_l"])
def test_config_from_state_dict_recovers_preset(preset: str) -> None:
    inferred = config_from_state_dict(to_official_state_dict(_meta_model(preset).state_dict()))
    assert _backbone(inferred) == _backbone(BiRefNetConfig.from_preset(preset))


def test_loader_strips_training_prefixes(tiny_state: dict[str, torch.Tensor]) -> None:
    wrapped = {f"module._orig_mod.{k}": v.clone() for k, v in tiny_state.items()}
    model = load_birefnet_state_dict(wrapped)
    assert not model.training
    assert _backbone(model.config) == _backbone(BiRefNetConfig.from_preset("tiny"))
    loaded = to_official_state_dict(model.state_dict())
    assert list(loaded) == list(tiny_state)
    assert all(
        torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tiny_state.items()
    )
    assert not any(t.is_meta for t in loaded.values())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_file_loader(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"birefnet{suffix}"
    if suffix == ".pth":
        torch.save({f"module._orig_mod.{k}": v for k, v in tiny_state.items()}, path)
    else:
        save_file({k: v.contiguous() for k, v in tiny_state.items()}, path)
    loaded = to_official_state_dict(load_birefnet_checkpoint(path).state_dict())
    assert list(loaded) == list(tiny_state)
    assert all(torch.equal(loaded[k], v) for k, v in tiny_state.items())


def test_loader_reports_missing_key(tiny_state: dict[str, torch.Tensor]) -> None:
    broken = dict(tiny_state)
    del broken["decoder.gdt_convs_pred_2.0.bias"]
    with pytest.raises(
        StateDictMismatchError, match=r"missing keys \(1\): decoder\.gdt_convs_pred_2\.0\.bias"
    ):
        load_birefnet_state_dict(broken)


def test_loader_reports_unexpected_key(tiny_state: dict[str, torch.Tensor]) -> None:
    broken = {**tiny_state, "decoder.refiner.weight": torch.zeros(1)}
    with pytest.raises(
        StateDictMismatchError, match=r"unexpected keys \(1\): decoder\.refiner\.weight"
    ):
        load_birefnet_state_dict(broken)


def test_loader_reports_shape_mismatch(tiny_state: dict[str, torch.Tensor]) -> None:
    broken = {**tiny_state, "decoder.conv_out1.0.bias": torch.zeros(2)}
    with pytest.raises(
        StateDictMismatchError, match=r"shape mismatches \(1\): decoder\.conv_out1\.0\.bias"
    ):
        load_birefnet_state_dict(broken, BiRefNetConfig.from_preset("tiny"))


def test_config_from_state_dict_rejects_other_models() -> None:
    with pytest.raises(ValueError, match="not a BiRefNet"):
        config_from_state_dict({"encoder.weight": torch.zeros(1)})


def test_presets_and_validation() -> None:
    assert _backbone(BiRefNetConfig.from_preset("toonout")) == _backbone(BiRefNetConfig())
    assert BiRefNetConfig.from_preset("lite").window_size == 7
    with pytest.raises(KeyError, match="unknown BiRefNet preset"):
        BiRefNetConfig.from_preset("swin_v2")
    with pytest.raises(ValueError, match="multiple of 32"):
        BiRefNetConfig(resolution=1000)
    with pytest.raises(ValueError, match="4 Swin stages"):
        BiRefNetConfig(depths=(2, 2, 2), num_heads=(1, 2, 4))
