"""Score prediction sources (folders of masks, or models run on the images) over an evaluation
set, one image at a time so that memory stays flat whatever the set's size.

An animated input is matted frame by frame (a model source) or read as an animated prediction
(a folder source). Its accuracy is scored on every frame, and averaged, where its ground truth
is animated too; otherwise on the first frame. Its flicker (`metrics.flicker_score`) rates the
predicted frames against the input's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from toonq.shared.job import JobParams
from toonq.worker.engine.animation import Animation
from toonq.worker.engine.matting import MattingEngine, PreparedImage
from toonq.worker.evaluation.dataset import (
    EvalDataset,
    EvalImage,
    ImageLimits,
    check_matches,
    decode_masks,
    index_folder,
    preview,
    read_input,
    read_masks,
)
from toonq.worker.evaluation.errors import (
    EmptyGroundTruthError,
    FrameCountMismatchError,
    ImageSizeMismatchError,
)
from toonq.worker.evaluation.metrics import (
    FOREGROUND_THRESHOLD,
    METRICS,
    ImageScores,
    Mask,
    flicker_score,
    mean_over_frames,
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

    def predict(self, name: str, image: EvalImage | None) -> list[Mask]:
        """The predicted masks of the image `name`, one per frame (one for a still; a folder may
        hold a still for an animation). `image` is the input, when given."""
        ...


@dataclass(frozen=True)
class FolderSource:
    """Masks already on disk, one file per ground-truth stem (an animated file for an animated
    input)."""

    label: str
    folder: Path
    files: dict[str, Path]
    limits: ImageLimits
    #: Stems in the folder without a ground truth: left out of the evaluation.
    unused: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, folder: Path, dataset: EvalDataset, *, label: str, limits: ImageLimits) -> Self:
        files = index_folder(folder, "prediction")
        unused = check_matches(dataset.gt, files, gt_dir=dataset.gt_dir, folder=folder)
        return cls(label, folder, files, limits, unused)

    @property
    def description(self) -> str:
        return f"masks in {self.folder}"

    def predict(self, name: str, image: EvalImage | None) -> list[Mask]:
        return read_masks(self.files[name], limits=self.limits)


@dataclass(frozen=True)
class EngineSource:
    """A model run on each input image, as a `mask_only` job would be: an animation's frames
    one by one, then the engine's animated finish (temporal smoothing as `params` say)."""

    label: str
    engine: MattingEngine
    #: The parameters of that job (`mask_only`), at the engine's resolution.
    params: JobParams
    #: What reading the engine's animated output back may decode.
    limits: ImageLimits

    @property
    def description(self) -> str:
        return f"model {self.engine.model_name}"

    def predict(self, name: str, image: EvalImage | None) -> list[Mask]:
        if image is None:
            raise ValueError(f"{self.label}: a model needs the input image of {name}")
        if image.animation is None:
            return [self._alpha(self.engine.prepare(image.image, self.params))]
        return self._matte_animation(image.animation)

    def _alpha(self, prepared: PreparedImage) -> Mask:
        (logits,) = self.engine.infer([prepared])
        return np.asarray(self.engine.alpha(prepared, logits).cpu().numpy(), dtype=np.uint8)

    def _matte_animation(self, animation: Animation) -> list[Mask]:
        """The masks of the engine's animated output, read back as a folder's file would be."""
        # The engine writes the mattes into the frames it is given: the other source and the
        # flicker score need the input's own.
        copy = replace(animation, frames=[frame.copy() for frame in animation.frames])
        alphas = [self._alpha(self.engine.prepare(frame, self.params)) for frame in copy.frames]
        result = self.engine.finish_animation(copy, alphas, self.params, {})
        return decode_masks(result.data, limits=self.limits)


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
    limits: ImageLimits,
    allow_empty_gt: bool = False,
    observer: Callable[[Sample], None] | None = None,
) -> list[SourceResult]:
    """Score every source on every image of `dataset`, in stem order.

    Ground truths are checked first, so that a bad one stops the run before any model work:
    one without foreground (in any frame) raises `EmptyGroundTruthError` unless
    `allow_empty_gt`, in which case its undefined metrics are None. Halo and flicker are scored
    only when the dataset has images. Animated files of one image must agree on their frame
    count with its input and with each other (`FrameCountMismatchError`).
    """
    if not allow_empty_gt:
        check_ground_truths(dataset, limits=limits)
    results = [SourceResult(source.label, source.description) for source in sources]
    for name in tqdm(dataset.names, unit="img", file=sys.stderr, disable=None):
        gts = read_masks(dataset.gt[name], limits=limits)
        frame_counts = {str(dataset.gt[name]): len(gts)}
        image = None
        if dataset.images is not None:
            image = read_input(dataset.images[name], limits=limits)
            _check_size(image, gts[0], name)
        _check_frame_counts(name, image, frame_counts)  # before any model work
        size = (gts[0].shape[0], gts[0].shape[1])
        predictions = []
        for source in sources:
            masks = [resize_linear(mask, size) for mask in source.predict(name, image)]
            frame_counts[f"the prediction of {source.label}"] = len(masks)
            predictions.append(masks)
        _check_frame_counts(name, image, frame_counts)
        scores = tuple(_score(masks, gts, image) for masks in predictions)
        for result, score in zip(results, scores, strict=True):
            result.scores[name] = score
        if observer is not None:
            rgb = None if image is None else image.rgb()
            first_frames = tuple(masks[0] for masks in predictions)
            observer(Sample(name, gts[0], rgb, first_frames, scores))
    return results


def check_ground_truths(dataset: EvalDataset, *, limits: ImageLimits) -> None:
    """Read every ground truth; raise `EmptyGroundTruthError` naming those without foreground
    (in any of their frames)."""
    empty = [
        name
        for name in dataset.names
        if not all(
            (mask > FOREGROUND_THRESHOLD).any()
            for mask in read_masks(dataset.gt[name], limits=limits)
        )
    ]
    if empty:
        files = preview([str(dataset.gt[name]) for name in empty])
        raise EmptyGroundTruthError(
            f"{len(empty)} ground truth(s) have no foreground pixel (> {FOREGROUND_THRESHOLD}), "
            f"so Pixel Accuracy is undefined for them: {files}. Remove them, or score them "
            "anyway with --allow-empty-gt (their pixel_accuracy is then null)"
        )


def _score(masks: list[Mask], gts: list[Mask], image: EvalImage | None) -> ImageScores:
    """One prediction's scores: accuracy per frame and averaged where the prediction and the
    ground truth are both animated, on the first frame otherwise; flicker where the input and
    the prediction are animated."""
    frames = len(masks) if len(masks) == len(gts) else 1
    scores = mean_over_frames(
        [
            score_image(masks[index], gts[index], None if image is None else image.rgb(index))
            for index in range(frames)
        ]
    )
    if image is not None and image.animation is not None and len(masks) == image.frame_count:
        scores = replace(scores, flicker=flicker_score(image.animation.frames, masks))
    return scores


def _check_frame_counts(name: str, image: EvalImage | None, files: Mapping[str, int]) -> None:
    """Every animated file of an image has as many frames as its input (when given) and as the
    other animated files, so that their frames pair up one to one; a still may stand for an
    animation (its first frame is scored)."""
    counts = {what: count for what, count in files.items() if count > 1}
    if image is not None:
        counts = {"the input": image.frame_count, **counts}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{what}: {count}" for what, count in counts.items())
        raise FrameCountMismatchError(
            f"the frames of {name} do not pair up: {listed} frames (a still stands for an "
            "animation, other files need the input's frame count)"
        )


def _check_size(image: EvalImage, gt: Mask, name: str) -> None:
    height, width = gt.shape
    if image.image.size != (width, height):
        raise ImageSizeMismatchError(
            f"the image {name} is {image.image.width}x{image.image.height} but its ground truth "
            f"is {width}x{height}"
        )
