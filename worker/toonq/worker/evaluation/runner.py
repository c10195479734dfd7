"""Score prediction sources (folders of masks, or models run on the images) over an evaluation
set, one image at a time so that memory stays flat whatever the set's size."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
from PIL import Image
from tqdm import tqdm

from toonq.shared.job import JobParams
from toonq.worker.engine.decode import image_to_array
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.evaluation.dataset import (
    EvalDataset,
    check_matches,
    index_folder,
    preview,
    read_image,
    read_mask,
)
from toonq.worker.evaluation.errors import EmptyGroundTruthError, ImageSizeMismatchError
from toonq.worker.evaluation.metrics import (
    FOREGROUND_THRESHOLD,
    METRICS,
    ImageScores,
    Mask,
    mean_score,
    resize_linear,
    score_image,
)


class PredictionSource(Protocol):
    """Where one side's masks come from."""

    @property
    def label(self) -> str: ...

    @property
    def description(self) -> str: ...

    def predict(self, name: str, image: Image.Image | None) -> Mask:
        """The predicted mask for the image `name` (`image` is its RGBA pixels, when given)."""
        ...


@dataclass(frozen=True)
class FolderSource:
    """Masks already on disk, one file per ground-truth stem."""

    label: str
    folder: Path
    files: dict[str, Path]
    max_pixels: int
    #: Stems in the folder without a ground truth: left out of the evaluation.
    unused: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, folder: Path, dataset: EvalDataset, *, label: str, max_pixels: int) -> Self:
        files = index_folder(folder, "prediction")
        unused = check_matches(dataset.gt, files, gt_dir=dataset.gt_dir, folder=folder)
        return cls(label, folder, files, max_pixels, unused)

    @property
    def description(self) -> str:
        return f"masks in {self.folder}"

    def predict(self, name: str, image: Image.Image | None) -> Mask:
        return read_mask(self.files[name], max_pixels=self.max_pixels)


@dataclass(frozen=True)
class EngineSource:
    """A model run on each input image, as a `mask_only` job would be."""

    label: str
    engine: MattingEngine
    #: The parameters of that job (`mask_only`), at the engine's resolution.
    params: JobParams

    @property
    def description(self) -> str:
        return f"model {self.engine.model_name}"

    def predict(self, name: str, image: Image.Image | None) -> Mask:
        if image is None:
            raise ValueError(f"{self.label}: a model needs the input image of {name}")
        prepared = self.engine.prepare(image, self.params)
        (logits,) = self.engine.infer([prepared])
        return np.asarray(self.engine.alpha(prepared, logits).cpu().numpy(), dtype=np.uint8)


@dataclass(frozen=True)
class Sample:
    """One image as scored, for observers such as the contact sheet."""

    name: str
    gt: Mask
    #: The input image's RGB (H×W×3), when images were given.
    rgb: npt.NDArray[np.uint8] | None
    #: One mask per source, resized to the ground truth's size.
    predictions: tuple[Mask, ...]
    scores: tuple[ImageScores, ...]


@dataclass
class SourceResult:
    """One source's scores, image by image."""

    label: str
    description: str
    scores: dict[str, ImageScores] = field(default_factory=dict)

    def means(self) -> dict[str, float | None]:
        """Per metric, the mean over the images where it is defined."""
        return {
            metric.name: mean_score(s.as_dict()[metric.name] for s in self.scores.values())
            for metric in METRICS
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "source": self.description,
            "images": [{"name": name, **s.as_dict()} for name, s in self.scores.items()],
            "mean": self.means(),
        }


def evaluate(
    dataset: EvalDataset,
    sources: Sequence[PredictionSource],
    *,
    max_pixels: int,
    allow_empty_gt: bool = False,
    observer: Callable[[Sample], None] | None = None,
) -> list[SourceResult]:
    """Score every source on every image of `dataset`, in stem order.

    Ground truths are checked first, so that a bad one stops the run before any model work:
    one without foreground raises `EmptyGroundTruthError` unless `allow_empty_gt`, in which case
    its undefined metrics are None. Halo is scored only when the dataset has images.
    """
    if not allow_empty_gt:
        check_ground_truths(dataset, max_pixels=max_pixels)
    results = [SourceResult(source.label, source.description) for source in sources]
    for name in tqdm(dataset.names, unit="img", file=sys.stderr, disable=None):
        gt = read_mask(dataset.gt[name], max_pixels=max_pixels)
        image = None
        if dataset.images is not None:
            image = read_image(dataset.images[name], max_pixels=max_pixels)
            _check_size(image, gt, name)
        rgb = None if image is None else image_to_array(image)[..., :3]
        predictions = tuple(
            resize_linear(source.predict(name, image), (gt.shape[0], gt.shape[1]))
            for source in sources
        )
        scores = tuple(score_image(prediction, gt, rgb) for prediction in predictions)
        for result, score in zip(results, scores, strict=True):
            result.scores[name] = score
        if observer is not None:
            observer(Sample(name, gt, rgb, predictions, scores))
    return results


def check_ground_truths(dataset: EvalDataset, *, max_pixels: int) -> None:
    """Read every ground truth; raise `EmptyGroundTruthError` naming those without foreground."""
    empty = [
        name
        for name in dataset.names
        if not (read_mask(dataset.gt[name], max_pixels=max_pixels) > FOREGROUND_THRESHOLD).any()
    ]
    if empty:
        files = preview([str(dataset.gt[name]) for name in empty])
        raise EmptyGroundTruthError(
            f"{len(empty)} ground truth(s) have no foreground pixel (> {FOREGROUND_THRESHOLD}), "
            f"so Pixel Accuracy is undefined for them: {files}. Remove them, or score them "
            "anyway with --allow-empty-gt (their pixel_accuracy is then null)"
        )


def _check_size(image: Image.Image, gt: Mask, name: str) -> None:
    height, width = gt.shape
    if image.size != (width, height):
        raise ImageSizeMismatchError(
            f"the image {name} is {image.width}x{image.height} but its ground truth is "
            f"{width}x{height}"
        )
