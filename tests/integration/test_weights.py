"""Every way `--model SPEC` names weights, and the errors when they cannot be had."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.support import run_toonq
from toonq.shared.errors import ModelUnavailableError
from toonq.shared.settings import Settings
from toonq.shared.storage import open_store
from toonq.worker.birefnet import BiRefNet, to_official_state_dict
from toonq.worker.engine.weights import KNOWN_CHECKPOINTS, load_model, random_model


@pytest.fixture(scope="module")
def tiny() -> BiRefNet:
    torch.manual_seed(1)
    return random_model("tiny")


def official_layout(model: BiRefNet) -> dict[str, torch.Tensor]:
    """The model's weights under the official key names, as a bare checkpoint file holds them."""
    return {k: v.contiguous() for k, v in to_official_state_dict(model.state_dict()).items()}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_a_pth_with_the_toonout_prefix_loads(tiny: BiRefNet, tmp_path: Path) -> None:
    path = tmp_path / "birefnet_finetuned_toonout.pth"
    torch.save({f"module._orig_mod.{k}": v for k, v in official_layout(tiny).items()}, path)

    loaded = load_model(str(path))

    assert same_weights(loaded.model, tiny)
    assert not loaded.model.training
    assert loaded.name == str(path)


def test_a_safetensors_file_and_a_save_pretrained_dir_load(tiny: BiRefNet, tmp_path: Path) -> None:
    save_file(official_layout(tiny), tmp_path / "w.safetensors")
    tiny.save_pretrained(tmp_path / "dir")

    assert same_weights(load_model(str(tmp_path / "w.safetensors")).model, tiny)
    assert same_weights(load_model(str(tmp_path / "dir")).model, tiny)


def test_an_s3_object_is_downloaded_once_into_the_cache(
    tiny: BiRefNet, tmp_path: Path, s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOONQ_MODEL_CACHE", str(tmp_path / "cache"))
    store = open_store(Settings.from_env({"TOONQ_S3_ENDPOINT_URL": s3_server}))
    local = tmp_path / "model.safetensors"
    save_file(official_layout(tiny), local)
    uri = f"s3://{s3_bucket}/models/model.safetensors"
    store.put(uri, local.read_bytes(), content_type="application/octet-stream")

    assert same_weights(load_model(uri, store=store).model, tiny)
    cached = list((tmp_path / "cache").rglob("model.safetensors"))
    assert len(cached) == 1


def test_random_presets_are_named_and_unknown_ones_rejected() -> None:
    loaded = load_model("random:tiny")
    assert (loaded.name, loaded.revision) == ("random:tiny", "random")
    with pytest.raises(ModelUnavailableError, match="unknown preset"):
        load_model("random:huge")


@pytest.mark.parametrize("spec", ["./missing.pth", "/nowhere/model.pth", "not a spec"])
def test_specs_that_name_nothing_are_rejected(spec: str) -> None:
    with pytest.raises(ModelUnavailableError):
        load_model(spec)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match="cannot load weights"):
        load_model(str(path))


def test_offline_with_nothing_cached_says_what_to_fetch_and_where(tmp_path: Path) -> None:
    env = dict(
        os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TOONQ_HOME=str(tmp_path)
    )
    result = run_toonq("model", "fetch", env=env)

    known = KNOWN_CHECKPOINTS["joelseytre/toonout"]
    assert result.returncode == 1
    assert "error [model_unavailable]" in result.stderr
    for expected in (
        known.filename,
        known.revision,
        known.sha256,
        str(tmp_path / "hf" / "hub"),
        "hf download joelseytre/toonout",
        "TOONQ_MODEL=/path/to/birefnet_finetuned_toonout.pth",
        "TOONQ_MODEL=random:tiny",
    ):
        assert expected in result.stderr


def test_model_random_writes_a_loadable_directory_and_says_so_loudly(tmp_path: Path) -> None:
    result = run_toonq(
        "model", "random", "--preset", "tiny", "--out", str(tmp_path / "m"), env=dict(os.environ)
    )

    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stderr
    model = load_model(str(tmp_path / "m")).model
    assert isinstance(model, BiRefNet)
    assert model.config.embed_dim == 32
