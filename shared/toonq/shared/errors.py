"""The error taxonomy shared by the producer, the worker and the CLI.

Every error toonq raises on purpose is a `ToonqError` with a stable, machine-readable `code`.
Job failures are recorded in the database under that code, so the codes are a contract with
the scripts that read them: never rename one.

Two families matter to the worker:

* `PermanentJobError`: retrying cannot help (missing object, corrupt image...). The job fails at
  once with the error's code.
* `TransientJobError`: the same attempt may succeed later (S3 throttling, a 5xx, a broker or
  database hiccup). The job is retried with backoff until its attempts run out.
"""

from __future__ import annotations


class ToonqError(Exception):
    """Base class of every error toonq raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


# --- Caller errors: raised to the producer's caller, nothing is written. -----------------------


class InvalidRequestError(ToonqError):
    """A submit or admin call with bad arguments; nothing was written or enqueued."""

    code = "invalid_request"


class InvalidURIError(InvalidRequestError):
    code = "invalid_uri"


class UnknownBucketError(InvalidRequestError):
    code = "unknown_bucket"


class InvalidCallbackURLError(InvalidRequestError):
    """A callback URL toonq will not call: not http(s), or an address inside the network."""

    code = "invalid_callback_url"


class IdempotencyConflictError(InvalidRequestError):
    """The idempotency key is taken by a job with different parameters."""

    code = "idempotency_conflict"


class OutputConflictError(InvalidRequestError):
    """An output URI that another job writes (or wrote, or may still write)."""

    code = "output_conflict"


class DuplicateJobIdError(InvalidRequestError):
    """A job id chosen by the caller that another job has."""

    code = "duplicate_job_id"


class AmbiguousJobIdError(InvalidRequestError):
    """A job id prefix that more than one job's id starts with."""

    code = "ambiguous_job_id"


class JobNotFoundError(ToonqError):
    code = "job_not_found"


class InvalidTransitionError(ToonqError):
    """The job's status does not allow the operation (e.g. cancel a finished job)."""

    code = "invalid_transition"


class AlreadyCancelledError(InvalidTransitionError):
    """Cancelling a job that is cancelled already: nothing changed, as the caller wanted."""

    code = "already_cancelled"


class ConfigurationError(ToonqError):
    code = "configuration_error"


# --- Job errors: recorded on the job by the worker. ---------------------------------------------


class JobError(ToonqError):
    """An error that ends or interrupts one job's attempt."""


class PermanentJobError(JobError):
    """Retrying cannot help: the job fails at once."""


class TransientJobError(JobError):
    """The same attempt may succeed later: the job is retried with backoff."""

    code = "transient_error"


class SharedMemoryFullError(TransientJobError):
    """A job process found no room in the worker's shared memory (/dev/shm) for an image's model
    input."""

    code = "shared_memory_full"


class InputNotFoundError(PermanentJobError):
    code = "input_not_found"


class InputAccessDeniedError(PermanentJobError):
    code = "input_access_denied"


class OutputAccessDeniedError(PermanentJobError):
    code = "output_access_denied"


class InvalidImageError(PermanentJobError):
    """Undecodable, truncated or empty (zero-size) image data."""

    code = "invalid_image"


class UnsupportedFormatError(InvalidImageError):
    """Data that no supported image decoder recognises."""

    code = "unsupported_format"


class ImageTooLargeError(PermanentJobError):
    """More pixels (or bytes) than the configured limit: a guard against decompression bombs."""

    code = "image_too_large"


class TooManyFramesError(ImageTooLargeError):
    """An animation with more frames (or a longer running time) than the configured limits
    (`TOONQ_MAX_FRAMES`, `TOONQ_MAX_ANIMATION_S`)."""

    code = "too_many_frames"


class CannotFitPresetError(PermanentJobError):
    """The output cannot be made to meet one of its platform preset's limits (size, frames,
    duration); the message names the limit."""

    code = "cannot_fit_preset"


class WorkerLostError(PermanentJobError):
    """The job's worker died on every attempt (e.g. the image crashes or OOM-kills it)."""

    code = "worker_lost"


class StorageUnavailableError(TransientJobError):
    """Object storage throttled, timed out or answered 5xx."""

    code = "storage_unavailable"


class DatabaseUnavailableError(TransientJobError):
    code = "database_unavailable"


class ModelUnavailableError(ToonqError):
    """Model weights cannot be found, downloaded or verified."""

    code = "model_unavailable"


class ChecksumMismatchError(ModelUnavailableError):
    code = "checksum_mismatch"


#: Every error a job can fail with.
_JOB_ERRORS: tuple[type[ToonqError], ...] = (
    JobError,  # internal_error: an unexpected exception, after its retries
    InputNotFoundError,
    InputAccessDeniedError,
    OutputAccessDeniedError,
    InvalidImageError,
    UnsupportedFormatError,
    ImageTooLargeError,
    TooManyFramesError,
    CannotFitPresetError,
    WorkerLostError,
    InvalidURIError,  # a job row whose URI a newer worker no longer accepts
    StorageUnavailableError,
    DatabaseUnavailableError,
)

#: Every code a job's `error_code` can hold (validates `--error-code` filters).
JOB_ERROR_CODES: frozenset[str] = frozenset(cls.code for cls in _JOB_ERRORS)

#: The codes of failures that running the job again cannot help: a requeue by filter skips
#: the jobs that failed with one unless asked to include them.
PERMANENT_ERROR_CODES: frozenset[str] = frozenset(
    cls.code for cls in _JOB_ERRORS if issubclass(cls, (PermanentJobError, InvalidRequestError))
)
