"""Every allowed value toonq checks, defined once: settings, the CLI's choices, the client, the
engine and the database constraints all read them from here."""

from __future__ import annotations

from typing import Final, Literal, get_args

from toonq.shared.errors import InvalidRequestError

OutputFormat = Literal["png", "webp"]
OUTPUT_FORMATS: Final[tuple[OutputFormat, ...]] = get_args(OutputFormat)

#: Job priorities run 0 (the default) to 9 (served first).
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 9

#: BiRefNet's decoder cuts its input into a grid of patches at 1/32 scale.
RESOLUTION_MULTIPLE: Final = 32
MAX_RESOLUTION: Final = 4096

#: Numeric precisions of the model; `auto` is fp16 on a GPU and fp32 on a CPU.
PRECISIONS: Final = ("auto", "fp32", "fp16", "bf16")
#: torch.compile modes; `off` runs the model eagerly.
COMPILE_MODES: Final = ("off", "default", "reduce-overhead", "max-autotune")

LOG_FORMATS: Final = ("auto", "json", "console")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: File suffixes the CLI treats as images when it walks a folder.
IMAGE_SUFFIXES: Final = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)


def resolution_problem(resolution: int) -> str | None:
    """Why `resolution` cannot be a model input size, or None if it can."""
    if resolution % RESOLUTION_MULTIPLE or not RESOLUTION_MULTIPLE <= resolution <= MAX_RESOLUTION:
        return (
            f"must be a positive multiple of {RESOLUTION_MULTIPLE} up to {MAX_RESOLUTION}, "
            f"got {resolution}"
        )
    return None


def check_resolution(resolution: int) -> int:
    """`resolution`, or InvalidRequestError saying why it cannot be a model input size."""
    problem = resolution_problem(resolution)
    if problem:
        raise InvalidRequestError(f"resolution {problem}")
    return resolution
