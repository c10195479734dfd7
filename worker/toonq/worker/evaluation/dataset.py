"""An evaluation set on disk: ground-truth masks, optional input images, paired by file stem.

The layout is ToonOut's: `im/` holds the images and `gt/` the masks, one file per image with the
same stem (`im/0001.jpg` ↔ `gt/0001.png`). Only the files directly inside a folder count, and
only those with an image suffix. Every ground truth needs its image (when images are given) and
its prediction in each prediction folder; files without a ground truth are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from toonq.shared.choices import IMAGE_SUFFIXES
from toonq.shared.errors import ToonqError
from toonq.worker.engine.decode import decode_image, image_to_array
from toonq.worker.evaluation.errors import (
    DatasetNotFoundError,
    UnmatchedFilesError,
    UnreadableImageError,
)
from toonq.worker.evaluation.metrics import Mask

#: How many stems an error message lists before "and N more".
_PREVIEW: Final = 5


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


def read_mask(path: Path, *, max_pixels: int) -> Mask:
    """An 8-bit mask from an image file, H×W uint8.

    A file with any transparent pixel is a cut-out, and its alpha channel is the mask (a
    `toonq matte` output can be scored as it is). Otherwise the mask is the image's grey level:
    the value itself for a greyscale file, Rec. 601 luma (cv2's greyscale conversion) for a
    colour one. The file is decoded like a job's input (EXIF orientation applied).
    """
    rgba = image_to_array(read_image(path, max_pixels=max_pixels))
    alpha = rgba[..., 3]
    if (alpha < 255).any():
        return alpha
    return _luma(rgba[..., :3])


def read_image(path: Path, *, max_pixels: int) -> Image.Image:
    """An input image as 8-bit RGBA, decoded like a job's input."""
    try:
        return decode_image(path.read_bytes(), max_pixels=max_pixels)
    except (ToonqError, OSError) as exc:
        raise UnreadableImageError(f"cannot read {path}: {exc}") from exc


def preview(items: list[str]) -> str:
    """The first few of `items`, comma-separated, for an error message."""
    if not items:
        return "none"
    shown = ", ".join(items[:_PREVIEW])
    return shown + (f" and {len(items) - _PREVIEW} more" if len(items) > _PREVIEW else "")


def _luma(rgb: npt.NDArray[np.uint8]) -> Mask:
    # cv2's fixed-point BGR2GRAY weights (0.299, 0.587, 0.114 in 14 bits), rounded.
    weights = np.array([4899, 9617, 1868], dtype=np.uint32)
    return ((rgb.astype(np.uint32) @ weights + (1 << 13)) >> 14).astype(np.uint8)
