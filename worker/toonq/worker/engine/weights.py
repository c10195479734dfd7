"""Where model weights come from: one `--model SPEC` / `TOONQ_MODEL` string, resolved to a model.

A spec is one of:

* a local `.pth`/`.pt`/`.bin` (torch state dict) or `.safetensors` file, with the official
  BiRefNet key names;
* a `save_pretrained` directory (config.json + model.safetensors);
* an `s3://bucket/key` object (downloaded once into the model cache, then a file);
* a Hugging Face hub id `org/name[@revision]` (downloaded once into the standard HF cache);
* `random:PRESET` (`tiny`, `lite`, `toonout`): random weights, for smoke tests only;
* `standin:MS`: no network at all, a fixed wait of MS milliseconds per batch (benchmarks).

The default, `joelseytre/toonout`, is ToonOut's official checkpoint at a pinned revision,
verified against its known SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.constants import HF_HUB_CACHE
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from toonq.shared.errors import ChecksumMismatchError, ModelUnavailableError
from toonq.shared.logging import get_logger
from toonq.shared.storage import ObjectStore, ObjectURI
from toonq.worker.birefnet import (
    BiRefNet,
    BiRefNetConfig,
    StateDictMismatchError,
    load_birefnet_checkpoint,
)
from toonq.worker.engine.standin import STANDIN_PREFIX, StandInModel

log = get_logger(__name__)

# The hub gives its loggers a stream handler of their own on import, so that each of its lines
# was written twice once the process routes logging: they go through the process's handlers only.
logging.getLogger("huggingface_hub").handlers.clear()

RANDOM_PREFIX = "random:"
_HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin")


@dataclass(frozen=True)
class HubCheckpoint:
    """A published checkpoint that is a bare state dict rather than a `save_pretrained` repo."""

    filename: str
    revision: str
    sha256: str
    size_mb: int


#: Known hub repos whose weights are a single state-dict file.
KNOWN_CHECKPOINTS: dict[str, HubCheckpoint] = {
    "joelseytre/toonout": HubCheckpoint(
        filename="birefnet_finetuned_toonout.pth",
        revision="cbf720eca394edcde66b861a8a8c20fbabe9c748",
        sha256="8c7f8a0bc24400f4caade76622f75ff22ca1e93e169add9d2b70093e2487fbe5",
        size_mb=885,
    ),
}


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on the CPU, with the identity recorded on every job it processes."""

    model: torch.nn.Module
    name: str
    revision: str | None


def load_model(spec: str, *, store: ObjectStore | None = None) -> LoadedModel:
    """Resolve `spec` (see the module docstring) to a model in eval mode on the CPU.

    `store` is needed only for `s3://` specs. Raises `ModelUnavailableError` with what to do
    when the weights cannot be had.
    """
    if spec.startswith(RANDOM_PREFIX):
        return _random_model(spec.removeprefix(RANDOM_PREFIX))
    if spec.startswith(STANDIN_PREFIX):
        return _standin_model(spec.removeprefix(STANDIN_PREFIX))
    if spec.startswith("s3://"):
        if store is None:
            raise ModelUnavailableError(f"{spec}: an object store is needed to fetch s3:// weights")
        return _load_path(_fetch_s3(spec, store), name=spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _load_path(path, name=str(path))
    match = _HUB_ID.match(spec)
    if match is None or spec.startswith((".", "/", "~")):
        raise ModelUnavailableError(
            f"model spec {spec!r} is not an existing file or directory, an s3:// URI, "
            "a hub id org/name[@revision] or random:PRESET"
        )
    return _load_hub(match["repo"], match["revision"])


def random_model(preset: str) -> BiRefNet:
    """A randomly initialised model of `preset`. Its masks are noise: smoke tests only."""
    try:
        config = BiRefNetConfig.from_preset(preset)
    except KeyError:
        raise ModelUnavailableError(f"unknown preset {preset!r}") from None
    return BiRefNet(config).eval()


def _random_model(preset: str) -> LoadedModel:
    log.warning(
        "random_weights",
        preset=preset,
        detail="RANDOM WEIGHTS: masks are noise; use this only to smoke-test a deployment",
    )
    torch.manual_seed(0)
    return LoadedModel(random_model(preset), name=RANDOM_PREFIX + preset, revision="random")


def _standin_model(latency: str) -> LoadedModel:
    try:
        model = StandInModel(float(latency.removesuffix("ms")))
    except ValueError:
        raise ModelUnavailableError(
            f"{STANDIN_PREFIX}{latency}: expected a latency in milliseconds, e.g. standin:50"
        ) from None
    log.warning("standin_model", latency_ms=model.latency_ms, detail="NO MODEL: masks are blank")
    return LoadedModel(model, name=STANDIN_PREFIX + latency, revision="standin")


def _load_path(path: Path, *, name: str) -> LoadedModel:
    if path.is_dir():
        if (path / "config.json").is_file():
            model = BiRefNet.from_pretrained(path)
            return LoadedModel(model.eval(), name=name, revision=None)
        weights = sorted(
            p for p in path.iterdir() if p.suffix in (*_STATE_DICT_SUFFIXES, ".safetensors")
        )
        if len(weights) != 1:
            raise ModelUnavailableError(
                f"{path}: expected config.json or exactly one weights file, found "
                f"{[p.name for p in weights] or 'none'}"
            )
        path = weights[0]
    return LoadedModel(_load_file(path), name=name, revision=None)


def _load_file(path: Path) -> BiRefNet:
    if path.suffix not in (*_STATE_DICT_SUFFIXES, ".safetensors"):
        raise ModelUnavailableError(
            f"{path}: unknown weights format (expected .pth, .pt, .bin or .safetensors)"
        )
    try:
        # A .pth is unpickled with weights_only: a checkpoint is data, never code.
        return load_birefnet_checkpoint(path)
    except (OSError, RuntimeError, StateDictMismatchError) as exc:
        raise ModelUnavailableError(f"{path}: cannot load weights: {exc}") from exc


def _fetch_s3(uri: str, store: ObjectStore) -> Path:
    target = _model_cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = target / ObjectURI.parse(uri).key.rsplit("/", 1)[-1]
    if not target.is_file():
        log.info("model_download", uri=uri, path=str(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(store.get(uri, max_bytes=1 << 40))
        partial.replace(target)
    return target


def _model_cache_dir() -> Path:
    cache = os.environ.get("TOONQ_MODEL_CACHE")
    if cache:
        return Path(cache).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "toonq" / "models"


def _load_hub(repo: str, revision: str | None) -> LoadedModel:
    known = KNOWN_CHECKPOINTS.get(repo)
    if known is not None:
        revision = revision or known.revision
        path = _hub_download(repo, known.filename, revision, known)
        if revision == known.revision:
            _verify_sha256(path, known.sha256)
        return LoadedModel(_load_file(path), name=repo, revision=revision)
    # Any other repo: our own save_pretrained layout, or upstream BiRefNet's, whose config needs
    # remote code: then only its weights are used and the architecture is inferred from them.
    config_path = _hub_download(repo, "config.json", revision, None)
    weights_path = _hub_download(repo, "model.safetensors", revision, None)
    snapshot = weights_path.parent  # .../snapshots/<commit>/, holding both files
    model = (
        BiRefNet.from_pretrained(snapshot) if _is_ours(config_path) else _load_file(weights_path)
    )
    return LoadedModel(model.eval(), name=repo, revision=snapshot.name)


def _is_ours(config_path: Path) -> bool:
    return f'"model_type": "{BiRefNetConfig.model_type}"' in config_path.read_text()


def _hub_download(
    repo: str, filename: str, revision: str | None, known: HubCheckpoint | None
) -> Path:
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except EntryNotFoundError as exc:  # includes "offline and not cached"
        raise ModelUnavailableError(_offline_message(repo, filename, revision, known)) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelUnavailableError(
            f"cannot download {filename} from the hub repo {repo}: {exc}\n"
            + _offline_message(repo, filename, revision, known)
        ) from exc


def _offline_message(
    repo: str, filename: str, revision: str | None, known: HubCheckpoint | None
) -> str:
    rev = revision or "main"
    size = f" ({known.size_mb} MB)" if known else ""
    checksum = f", sha256 {known.sha256}" if known else ""
    return (
        f"Model weights unavailable: {filename}{size} of the Hugging Face hub repo {repo} "
        f"(revision {rev}) could not be downloaded and is not in the cache {HF_HUB_CACHE}.\n"
        f"Either fetch it on a machine with network and copy the cache here:\n"
        f"    hf download {repo} {filename} --revision {rev}\n"
        f"or download https://huggingface.co/{repo}/resolve/{rev}/{filename}{checksum} "
        f"and set TOONQ_MODEL=/path/to/{filename}.\n"
        f"To smoke-test without real weights: TOONQ_MODEL=random:tiny."
    )


def _verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ChecksumMismatchError(
            f"{path}: sha256 {digest.hexdigest()} does not match the published {expected}; "
            "delete the file and download it again"
        )
