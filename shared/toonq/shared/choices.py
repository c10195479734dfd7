"""Every allowed value toonq checks, defined once: settings, the CLI's choices, the client, the
engine and the database constraints all read them from here."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args

from toonq.shared.errors import InvalidRequestError

OutputFormat = Literal["png", "webp"]
OUTPUT_FORMATS: Final[tuple[OutputFormat, ...]] = get_args(OutputFormat)

#: Platform presets: the limits of each platform's stickers that a job's output is fitted to.
Preset = Literal["telegram", "line", "discord"]
PRESETS: Final[tuple[Preset, ...]] = get_args(Preset)
#: The output formats each platform takes: LINE and Discord take PNG and APNG only.
PRESET_FORMATS: Final[Mapping[Preset, tuple[OutputFormat, ...]]] = MappingProxyType(
    {"telegram": OUTPUT_FORMATS, "line": ("png",), "discord": ("png",)}
)

#: The widest margin around a trimmed subject and the widest sticker outline, in pixels.
MAX_MARGIN: Final = 1024
MAX_OUTLINE: Final = 128

#: Job priorities run 0 (the default) to 9 (served first).
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 9

#: BiRefNet's decoder cuts its input into a grid of patches at 1/32 scale.
RESOLUTION_MULTIPLE: Final = 32
#: The largest model input toonq accepts at all; a deployment sets its own lower cap
#: (`TOONQ_MAX_RESOLUTION`).
MAX_RESOLUTION: Final = 4096

#: Numeric precisions of the model; `auto` is fp16 on a GPU and fp32 on a CPU.
PRECISIONS: Final = ("auto", "fp32", "fp16", "bf16")
#: torch.compile modes; `off` runs the model eagerly.
COMPILE_MODES: Final = ("off", "default", "reduce-overhead", "max-autotune")

#: Where a worker of job processes prepares images for the model and turns its output into
#: alpha mattes; `auto` is the model process on a GPU and the job processes on the CPU.
PREPARE_IN: Final = ("auto", "job-processes", "model-process")

LOG_FORMATS: Final = ("auto", "json", "console")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: File suffixes the CLI treats as images when it walks a folder.
IMAGE_SUFFIXES: Final = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)


def resolution_problem(resolution: int, limit: int = MAX_RESOLUTION) -> str | None:
    """Why `resolution` cannot be a model input size up to `limit`, or None if it can."""
    if resolution % RESOLUTION_MULTIPLE or not RESOLUTION_MULTIPLE <= resolution <= limit:
        return (
            f"must be a positive multiple of {RESOLUTION_MULTIPLE} up to {limit}, got {resolution}"
        )
    return None


def check_resolution(resolution: int, limit: int = MAX_RESOLUTION) -> int:
    """`resolution`, or InvalidRequestError saying why it cannot be a model input size up to
    `limit`."""
    problem = resolution_problem(resolution, limit)
    if problem:
        raise InvalidRequestError(f"resolution {problem}")
    return resolution
