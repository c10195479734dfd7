"""Why an evaluation cannot run: each error names the file or folder at fault."""

from __future__ import annotations

from toonq.shared.errors import ToonqError


class EvaluationError(ToonqError):
    """Base class of the errors `toonq eval` raises about its inputs."""

    code = "evaluation_error"


class DatasetNotFoundError(EvaluationError):
    """A folder given to the evaluation does not exist or is not a folder."""

    code = "dataset_not_found"


class UnmatchedFilesError(EvaluationError):
    """File stems do not pair up: nothing matches, a ground truth has no prediction (or image),
    or two files in one folder share a stem."""

    code = "unmatched_files"


class UnreadableImageError(EvaluationError):
    """A mask or image file cannot be decoded."""

    code = "unreadable_image"


class EmptyGroundTruthError(EvaluationError):
    """A ground-truth mask has no foreground pixel (> 128), so Pixel Accuracy is undefined."""

    code = "empty_ground_truth"


class ImageSizeMismatchError(EvaluationError):
    """An input image and its ground-truth mask differ in size, so they cannot be paired."""

    code = "image_size_mismatch"


class FrameCountMismatchError(EvaluationError):
    """Animated files of one image (its input, ground truth or a prediction) differ in their
    number of frames, so their frames cannot be paired."""

    code = "frame_count_mismatch"
