"""Settings from the environment, with embedded defaults that need no server at all.

With nothing configured, toonq keeps everything under `TOONQ_HOME` (default `./.toonq`): a SQLite
database, a folder-backed broker and a folder used as the object store. Production sets
`TOONQ_DATABASE_URL`, `TOONQ_BROKER_URL`, `TOONQ_OUTPUT_PREFIX` and the S3 variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from toonq.shared.errors import ConfigurationError

DEFAULT_MODEL = "joelseytre/toonout"
DEFAULT_QUEUE = "matting"
DEFAULT_BG_COLOR = "#808080"
EMBEDDED_BROKER = "filesystem://localhost/"
MAX_RESOLUTION = 4096


def normalize_database_url(url: str) -> str:
    """Accept the plain `postgresql://` form (and Heroku's `postgres://`) by naming the psycopg 3
    driver, which is the one toonq installs; driver-qualified and SQLite URLs pass unchanged."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must be >= 0, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "0").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 1 or 0, got {raw!r}")


def _choice(
    env: Mapping[str, str],
    name: str,
    default: str,
    choices: tuple[str, ...],
    *,
    upper: bool = False,
) -> str:
    value = env.get(name) or default
    if upper:
        value = value.upper()
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Every knob of toonq. Build it with `Settings.from_env()`; fields are documented in the
    README's configuration table under their environment variable names."""

    home: Path = Path(".toonq")
    database_url: str = ""
    broker_url: str = EMBEDDED_BROKER
    queue: str = DEFAULT_QUEUE
    s3_endpoint_url: str | None = None
    s3_max_attempts: int = 4
    s3_connect_timeout_s: float = 5.0
    s3_read_timeout_s: float = 60.0
    output_prefix: str = ""
    # Engine.
    model: str = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "auto"
    resolution: int = 1024
    bg_color: str = DEFAULT_BG_COLOR
    png_compress_level: int = 1
    compile_mode: str = "off"
    channels_last: bool = False
    max_image_pixels: int = 50_000_000
    max_input_bytes: int = 100 * 1024 * 1024
    # Delivery and retries.
    max_attempts: int = 5
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    lease_s: int = 60
    job_timeout_s: int = 900
    visibility_timeout_s: int = 3600
    sweep_interval_s: int = 15
    resend_after_s: int = 21600
    shutdown_grace_s: float = 30.0
    # Pipeline: jobs in flight per worker and the GPU loop's batching (0 = chosen for the device).
    concurrency: int = 0
    max_batch_size: int = 0
    max_batch_wait_ms: float = 10.0
    # Operations.
    worker_name: str | None = None
    log_format: str = "auto"
    log_level: str = "INFO"
    metrics_port: int = 0
    metrics_queue_depth: bool = False
    liveness_timeout_s: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("TOONQ_HOME") or ".toonq").expanduser().absolute()
        settings = cls(
            home=home,
            database_url=normalize_database_url(
                env.get("TOONQ_DATABASE_URL") or f"sqlite:///{home / 'toonq.db'}"
            ),
            broker_url=env.get("TOONQ_BROKER_URL") or EMBEDDED_BROKER,
            queue=env.get("TOONQ_QUEUE") or DEFAULT_QUEUE,
            s3_endpoint_url=env.get("TOONQ_S3_ENDPOINT_URL") or None,
            s3_max_attempts=_int(env, "TOONQ_S3_MAX_ATTEMPTS", 4, minimum=1),
            s3_connect_timeout_s=_float(env, "TOONQ_S3_CONNECT_TIMEOUT_S", 5.0),
            s3_read_timeout_s=_float(env, "TOONQ_S3_READ_TIMEOUT_S", 60.0),
            output_prefix=(env.get("TOONQ_OUTPUT_PREFIX") or (home / "outputs").as_uri()).rstrip(
                "/"
            ),
            model=env.get("TOONQ_MODEL") or DEFAULT_MODEL,
            device=env.get("TOONQ_DEVICE") or "auto",
            precision=_choice(env, "TOONQ_PRECISION", "auto", ("auto", "fp32", "fp16", "bf16")),
            resolution=_int(env, "TOONQ_RESOLUTION", 1024, minimum=32),
            bg_color=env.get("TOONQ_BG_COLOR") or DEFAULT_BG_COLOR,
            png_compress_level=_int(env, "TOONQ_PNG_COMPRESS_LEVEL", 1),
            compile_mode=_choice(
                env,
                "TOONQ_COMPILE",
                "off",
                ("off", "default", "reduce-overhead", "max-autotune"),
            ),
            channels_last=_flag(env, "TOONQ_CHANNELS_LAST"),
            max_image_pixels=_int(env, "TOONQ_MAX_IMAGE_PIXELS", 50_000_000, minimum=1),
            max_input_bytes=_int(env, "TOONQ_MAX_INPUT_BYTES", 100 * 1024 * 1024, minimum=1),
            max_attempts=_int(env, "TOONQ_MAX_ATTEMPTS", 5, minimum=1),
            retry_backoff_s=_float(env, "TOONQ_RETRY_BACKOFF_S", 2.0),
            retry_backoff_max_s=_float(env, "TOONQ_RETRY_BACKOFF_MAX_S", 300.0),
            lease_s=_int(env, "TOONQ_LEASE_SECONDS", 60, minimum=1),
            job_timeout_s=_int(env, "TOONQ_JOB_TIMEOUT_S", 900, minimum=1),
            visibility_timeout_s=_int(env, "TOONQ_VISIBILITY_TIMEOUT_S", 3600, minimum=1),
            sweep_interval_s=_int(env, "TOONQ_SWEEP_INTERVAL_S", 15),
            resend_after_s=_int(env, "TOONQ_RESEND_AFTER_S", 21600, minimum=1),
            shutdown_grace_s=_float(env, "TOONQ_SHUTDOWN_GRACE_S", 30.0),
            concurrency=_int(env, "TOONQ_CONCURRENCY", 0),
            max_batch_size=_int(env, "TOONQ_MAX_BATCH_SIZE", 0),
            max_batch_wait_ms=_float(env, "TOONQ_MAX_BATCH_WAIT_MS", 10.0),
            worker_name=env.get("TOONQ_WORKER_NAME") or None,
            log_format=_choice(env, "TOONQ_LOG_FORMAT", "auto", ("auto", "json", "console")),
            log_level=_choice(
                env,
                "TOONQ_LOG_LEVEL",
                "INFO",
                ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                upper=True,
            ),
            metrics_port=_int(env, "TOONQ_METRICS_PORT", 0),
            metrics_queue_depth=_flag(env, "TOONQ_METRICS_QUEUE_DEPTH"),
            liveness_timeout_s=_float(env, "TOONQ_LIVENESS_TIMEOUT_S", 120.0),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.resolution % 32 or self.resolution > MAX_RESOLUTION:
            raise ConfigurationError(
                f"TOONQ_RESOLUTION must be a multiple of 32 up to {MAX_RESOLUTION}, "
                f"got {self.resolution}"
            )
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigurationError("TOONQ_PNG_COMPRESS_LEVEL must be between 0 and 9")
        if self.retry_backoff_max_s >= self.visibility_timeout_s:
            # A countdown longer than the broker's visibility timeout makes Redis redeliver the
            # message while it is still waiting: duplicate runs (kombu #337).
            raise ConfigurationError(
                "TOONQ_RETRY_BACKOFF_MAX_S must be below TOONQ_VISIBILITY_TIMEOUT_S"
            )
        if self.job_timeout_s < self.lease_s:
            raise ConfigurationError("TOONQ_JOB_TIMEOUT_S must be at least TOONQ_LEASE_SECONDS")
        if self.resend_after_s < self.visibility_timeout_s:
            # A message waiting in the queue is not lost: only re-send after Redis would have
            # redelivered an unacknowledged one.
            raise ConfigurationError(
                "TOONQ_RESEND_AFTER_S must be at least TOONQ_VISIBILITY_TIMEOUT_S"
            )

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        """Where the embedded broker keeps its messages."""
        return self.home / "broker"
