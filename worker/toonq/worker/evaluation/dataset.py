"""An evaluation set on disk: ground-truth masks, optional input images, paired by file stem.

The layout is ToonOut's: `im/` holds the images and `gt/` the masks, one file per image with the
same stem (`im/0001.jpg` ↔ `gt/0001.png`). Only the files directly inside a folder count, and
only those with an image suffix. Every ground truth needs its image (when images are given) and
its prediction in each prediction folder; files without a ground truth are left out.

Any file may be animated (GIF, APNG, WebP): each frame is then read, within the limits a job's
input has (`ImageLimits`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

import numpy as np
import numpy.typing as npt
from PIL import Image

from toonq.shared.choices import IMAGE_SUFFIXES
from toonq.shared.errors import ToonqError
from toonq.shared.settings import Settings
from toonq.worker.engine.animation import Animation, decode_animation
from toonq.worker.engine.decode import decode_image, decode_pixels, image_to_array
from toonq.worker.evaluation.errors import (
    DatasetNotFoundError,
    UnmatchedFilesError,
    UnreadableImageError,
)
from toonq.worker.evaluation.metrics import Mask

#: How many stems an error message lists before "and N more".
_PREVIEW: Final = 5


@dataclass(frozen=True)
class ImageLimits:
    """What the evaluation decodes, as for a job's input: pixels (of all the frames together,
    for an animation), frames and running time."""

    max_pixels: int
    max_frames: int
    max_duration_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """`TOONQ_MAX_IMAGE_PIXELS`, `TOONQ_MAX_FRAMES` and `TOONQ_MAX_ANIMATION_S`."""
        return cls(settings.max_image_pixels, settings.max_frames, settings.max_animation_s)


@dataclass(frozen=True)
class EvalImage:
    """An input image: its first (or only) frame, and all of its frames when it is animated."""

    #: The first frame, 8-bit RGBA.
    image: Image.Image
    #: Every frame of an animated input (GIF, APNG, WebP); None for a still.
    animation: Animation | None = None

    @property
    def frame_count(self) -> int:
        return 1 if self.animation is None else len(self.animation.frames)

    def rgb(self, frame: int = 0) -> npt.NDArray[np.uint8]:
        """The colours (H×W×3) of a frame of an animation, or of the still."""
        if self.animation is None:
            return image_to_array(self.image)[..., :3]
        return self.animation.frames[frame][..., :3]


@dataclass(frozen=True)
class EvalDataset:
    """Ground-truth masks by stem, and the input images by stem when they were given."""

    gt_dir: Path
    gt: dict[str, Path]
    images_dir: Path | None = None
    images: dict[str, Path] | None = None

    @property
    def names(self) -> list[str]:
        """The stems evaluated, sorted."""
        return sorted(self.gt)


def open_dataset(gt_dir: Path, images_dir: Path | None = None) -> EvalDataset:
    """Index `gt_dir` (and `images_dir`); raises if a folder is missing, holds no image file, or
    an image is missing for a ground truth."""
    gt = index_folder(gt_dir, "ground-truth")
    if not gt:
        raise UnmatchedFilesError(f"the ground-truth folder {gt_dir} holds no image file")
    if images_dir is None:
        return EvalDataset(gt_dir, gt)
    images = index_folder(images_dir, "image")
    check_matches(gt, images, gt_dir=gt_dir, folder=images_dir)
    return EvalDataset(gt_dir, gt, images_dir, images)


def index_folder(folder: Path, role: str) -> dict[str, Path]:
    """The image files directly inside `folder`, by stem. `role` names the folder in errors."""
    if not folder.is_dir():
        raise DatasetNotFoundError(f"the {role} folder {folder} does not exist or is not a folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise UnmatchedFilesError(
                f"{files[path.stem]} and {path} share the stem {path.stem!r}: "
                "which one to pair is ambiguous"
            )
        files[path.stem] = path
    return files


def check_matches(
    gt: dict[str, Path], files: dict[str, Path], *, gt_dir: Path, folder: Path
) -> list[str]:
    """Check that every ground-truth stem has a file in `files` (indexed from `folder`); returns
    the stems of `files` that have no ground truth, which the evaluation leaves out."""
    if not gt.keys() & files.keys():
        raise UnmatchedFilesError(
            f"no file stem in {folder} matches one in {gt_dir} "
            f"(ground truths: {preview(sorted(gt))}; {folder.name}: {preview(sorted(files))})"
        )
    missing = sorted(gt.keys() - files.keys())
    if missing:
        raise UnmatchedFilesError(
            f"{len(missing)} ground truth(s) in {gt_dir} have no file in {folder}: "
            f"{preview(missing)}"
        )
    return sorted(files.keys() - gt.keys())


def read_masks(path: Path, *, limits: ImageLimits) -> list[Mask]:
    """The masks of an image file, one per frame (one for a still): see `decode_masks`."""
    with _reading(path):
        return decode_masks(path.read_bytes(), limits=limits)


def decode_masks(data: bytes, *, limits: ImageLimits) -> list[Mask]:
    """An 8-bit mask (H×W uint8) per frame of an image file's bytes, one for a still.

    A file with any transparent pixel, in any frame, is a cut-out, and its alpha channel is the
    mask (a `toonq matte` output can be scored as it is). Otherwise the mask is the image's grey
    level: the value itself for a greyscale file, Rec. 601 luma (cv2's greyscale conversion) for
    a colour one. The one rule for all the frames keeps an animation's masks alike: an opaque
    frame of a cut-out is all foreground, not its colours' grey. The file is decoded like a
    job's input (EXIF orientation applied).
    """
    animation = _decode_animation(data, limits)
    if animation is None:
        frames = [decode_pixels(data, max_pixels=limits.max_pixels)]
    else:
        frames = animation.frames
    if any((frame[..., 3] < 255).any() for frame in frames):
        return [np.ascontiguousarray(frame[..., 3]) for frame in frames]
    return [_luma(frame[..., :3]) for frame in frames]


def read_input(path: Path, *, limits: ImageLimits) -> EvalImage:
    """An input image, 8-bit RGBA, with every frame when it is animated; decoded like a job's
    input."""
    with _reading(path):
        data = path.read_bytes()
        animation = _decode_animation(data, limits)
        if animation is None:
            return EvalImage(decode_image(data, max_pixels=limits.max_pixels))
        return EvalImage(Image.fromarray(animation.frames[0]), animation)


def preview(items: list[str]) -> str:
    """The first few of `items`, comma-separated, for an error message."""
    if not items:
        return "none"
    shown = ", ".join(items[:_PREVIEW])
    return shown + (f" and {len(items) - _PREVIEW} more" if len(items) > _PREVIEW else "")


def _decode_animation(data: bytes, limits: ImageLimits) -> Animation | None:
    return decode_animation(
        data,
        max_pixels=limits.max_pixels,
        max_frames=limits.max_frames,
        max_duration_s=limits.max_duration_s,
    )


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the decoder's errors about `path` into one that names the file."""
    try:
        yield
    except (ToonqError, OSError) as exc:
        raise UnreadableImageError(f"cannot read {path}: {exc}") from exc


def _luma(rgb: npt.NDArray[np.uint8]) -> Mask:
    # cv2's fixed-point BGR2GRAY weights (0.299, 0.587, 0.114 in 14 bits), rounded.
    weights = np.array([4899, 9617, 1868], dtype=np.uint32)
    return ((rgb.astype(np.uint32) @ weights + (1 << 13)) >> 14).astype(np.uint8)
