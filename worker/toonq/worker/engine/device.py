"""Choosing the device and the numeric precision the model runs in."""

from __future__ import annotations

import torch

from toonq.shared.errors import ConfigurationError

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_device(name: str) -> torch.device:
    """`auto` (the first GPU if there is one, else the CPU), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigurationError(
            f"unknown device {name!r}: use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigurationError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"device {name!r} requested but CUDA is not available (no GPU visible, or a "
                "PyTorch without CUDA): to run on the CPU use --device cpu (TOONQ_DEVICE=cpu), "
                "or auto to take a GPU only when there is one"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigurationError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto` is fp16 on a GPU (what ToonOut's own inference uses) and fp32 on the CPU."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ConfigurationError(
            f"unknown precision {precision!r}: use auto, {', '.join(PRECISIONS)}"
        ) from None


def configure_numerics(dtype: torch.dtype) -> None:
    """fp32 means IEEE fp32: TF32 shortcuts would move the masks away from the reference."""
    if dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
