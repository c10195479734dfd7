"""BiRefNet against the birefnet-dev fixture: outputs of the official code on deterministic weights.

Tolerances from the fixture's README: logits max abs <= 1e-3 and mask max abs <= 1e-4 on both
inputs (correct implementations measure <= 6e-5 and <= 1.4e-5); 1e-3 per intermediate tensor.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from tests.birefnet_recipe import (
    FIXTURE,
    RECIPE_SHA256,
    fixture_arrays,
    fixture_state_dict,
    read_keys,
    sha256_of,
)
from toonq.worker.bench.birefnet_dev import LOGITS_TOLERANCE as LOGITS_TOL
from toonq.worker.bench.birefnet_dev import MASK_TOLERANCE as MASK_TOL
from toonq.worker.birefnet import (
    BiRefNet,
    BiRefNetConfig,
    deform_conv,
    to_model_state_dict,
    to_official_state_dict,
)

INPUTS = ["128x128", "128x192"]
DEFORM_PATHS = ["torchvision", "pure"]


@pytest.fixture(scope="module")
def model() -> BiRefNet:
    net = BiRefNet(BiRefNetConfig.from_preset("tiny")).eval()
    net.load_state_dict(to_model_state_dict(fixture_state_dict()), strict=True)
    return net


@pytest.fixture(params=DEFORM_PATHS)
def deform_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    path: str = request.param
    if path == "torchvision" and not deform_conv.has_torchvision_op():
        pytest.skip("torchvision's deform_conv2d is not available")
    monkeypatch.setattr(deform_conv, "BACKEND", path)
    return path


def _input(tag: str) -> torch.Tensor:
    return torch.from_numpy(np.load(FIXTURE / f"input_{tag}.npy"))


def test_generator_matches_recipe_digest() -> None:
    arrays = fixture_arrays()
    assert len(arrays) == 530
    assert sum(a.size for a in arrays.values()) == 14_674_151
    assert sha256_of(arrays) == RECIPE_SHA256


def test_generator_matches_per_tensor_digests() -> None:
    rows = (FIXTURE / "weights_sums.tsv").read_text().splitlines()[1:]
    expected = {row.split("\t")[0]: row.split("\t")[-1] for row in rows}
    actual = {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in fixture_arrays().items()}
    assert actual == expected


def test_model_keys_follow_fixture_manifest_order() -> None:
    with torch.device("meta"):
        net = BiRefNet(BiRefNetConfig.from_preset("tiny"))
    state = to_official_state_dict(net.state_dict())
    manifest = read_keys(FIXTURE / "keys.tsv")
    assert list(state) == [spec.key for spec in manifest]
    assert [tuple(t.shape) for t in state.values()] == [spec.shape for spec in manifest]


@pytest.mark.parametrize("tag", INPUTS)
def test_reproduces_official_outputs(model: BiRefNet, tag: str, deform_path: str) -> None:
    with torch.no_grad():
        logits = model(_input(tag))
    expected_logits = np.load(FIXTURE / f"logits_{tag}.npy")
    expected_mask = np.load(FIXTURE / f"mask_{tag}.npy")
    assert logits.shape == expected_logits.shape
    logits_err = np.abs(logits.numpy() - expected_logits).max()
    mask_err = np.abs(torch.sigmoid(logits).numpy() - expected_mask).max()
    assert logits_err <= LOGITS_TOL, f"{deform_path}: logits off by {logits_err:.3g}"
    assert mask_err <= MASK_TOL, f"{deform_path}: mask off by {mask_err:.3g}"


def test_encoder_intermediates(model: BiRefNet) -> None:
    """Backbone, multi-scale and squeeze tensors of the 128x128 run (localises a mismatch)."""
    expected = np.load(FIXTURE / "intermediates_128x128.npz")
    x = _input("128x128")
    with torch.no_grad():
        full = model.backbone(x)
        half = model.backbone(
            torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=True)
        )
        encoded = model.encode(x)
    actual = {f"bb.x{i + 1}": t for i, t in enumerate(full)}
    actual |= {f"bb_half.x{i + 1}": t for i, t in enumerate(half)}
    actual |= {f"enc.x{i + 1}": t for i, t in enumerate(encoded[:3])}
    actual["squeeze"] = encoded[3]
    for name, tensor in actual.items():
        reference = expected[name]
        assert tensor.shape == reference.shape, name
        assert np.abs(tensor.numpy() - reference).max() <= 1e-3, name
