"""Settings from the environment, with embedded defaults that need no server at all.

With nothing configured, toonq keeps everything under `TOONQ_HOME` (default `./.toonq`): a SQLite
database, a folder-backed broker and a folder used as the object store. Production sets
`TOONQ_DATABASE_URL`, `TOONQ_BROKER_URL`, `TOONQ_OUTPUT_PREFIX` and the S3 variables.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from toonq.shared.choices import (
    COMPILE_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    PRECISIONS,
    PREPARE_IN,
    RESOLUTION_MULTIPLE,
    resolution_problem,
)
from toonq.shared.errors import ConfigurationError

DEFAULT_MODEL = "joelseytre/toonout"
DEFAULT_QUEUE = "matting"
DEFAULT_BG_COLOR = "#808080"
#: The model input size ToonOut was trained and evaluated at.
DEFAULT_RESOLUTION = 1024
EMBEDDED_BROKER = "filesystem://localhost/"
#: How long kombu's Redis transport blocks in BRPOP waiting for a message (its default). A
#: Redis socket timeout must outlast it, or an idle consumer's read times out.
KOMBU_BRPOP_TIMEOUT_S = 1.0


def normalize_database_url(url: str) -> str:
    """Accept the plain `postgresql://` form (and Heroku's `postgres://`) by naming the psycopg 3
    driver, which is the one toonq installs; driver-qualified and SQLite URLs pass unchanged."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


# --- Parsers: (variable name, non-empty raw value) -> value -----------------------------------

#: Keys of a field's metadata: the variable it is read from, and how its text is parsed.
VARIABLE = "toonq_variable"
PARSER = "toonq_parser"

Parser = Callable[[str, str], Any]


def _text(_: str, raw: str) -> str:
    return raw


def _path(_: str, raw: str) -> Path:
    return Path(raw)


def _prefix(_: str, raw: str) -> str:
    return raw.rstrip("/")


def _prefixes(_: str, raw: str) -> tuple[str, ...]:
    """Comma-separated prefixes; blanks around them and empty entries are ignored."""
    return tuple(_prefix(_, item.strip()) for item in raw.split(",") if item.strip())


def _lowered_items(_: str, raw: str) -> tuple[str, ...]:
    """Comma-separated items, lowercased; blanks and empty entries are ignored."""
    return tuple(item.strip().lower() for item in raw.split(",") if item.strip())


def _webhook_secret(name: str, raw: str) -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of the signing key."""
    key = raw.removeprefix("whsec_")
    try:
        if not base64.b64decode(key, validate=True):
            raise ValueError("empty")
    except ValueError:
        raise ConfigurationError(
            f"{name} must be whsec_ followed by the base64 of a key (e.g. 24 random bytes)"
        ) from None
    return raw


def _database_url(_: str, raw: str) -> str:
    return normalize_database_url(raw)


def _int(minimum: int = 0) -> Parser:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must be >= 0, got {value}")
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 1 or 0, got {raw!r}")


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw
        if value not in choices:
            raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    return parse


def _setting(variable: str, default: Any, parse: Parser = _text) -> Any:
    """A field read from `variable`; unset or empty means `default`."""
    return field(default=default, metadata={VARIABLE: variable, PARSER: parse})


@dataclass(frozen=True)
class Settings:
    """Every knob of toonq, each declared once with its environment variable, default and
    parser. Build it with `Settings.from_env()`; the README's configuration table documents the
    variables. Empty `database_url` and `output_prefix` mean the embedded defaults under `home`.
    """

    home: Path = _setting("TOONQ_HOME", Path(".toonq"), _path)  # noqa: RUF009 (a field)
    database_url: str = _setting("TOONQ_DATABASE_URL", "", _database_url)
    broker_url: str = _setting("TOONQ_BROKER_URL", EMBEDDED_BROKER)
    queue: str = _setting("TOONQ_QUEUE", DEFAULT_QUEUE)
    #: Bounds each Redis command and connect (0: wait for ever), so that a silent Redis fails a
    #: send instead of blocking it.
    redis_socket_timeout_s: float = _setting("TOONQ_REDIS_SOCKET_TIMEOUT_S", 10.0, _float)
    #: PostgreSQL's statement_timeout (0: none), so that one hung query cannot stall a thread.
    db_statement_timeout_s: float = _setting("TOONQ_DB_STATEMENT_TIMEOUT_S", 30.0, _float)
    s3_endpoint_url: str | None = _setting("TOONQ_S3_ENDPOINT_URL", None)
    s3_max_attempts: int = _setting("TOONQ_S3_MAX_ATTEMPTS", 4, _int(minimum=1))
    s3_connect_timeout_s: float = _setting("TOONQ_S3_CONNECT_TIMEOUT_S", 5.0, _float)
    s3_read_timeout_s: float = _setting("TOONQ_S3_READ_TIMEOUT_S", 60.0, _float)
    output_prefix: str = _setting("TOONQ_OUTPUT_PREFIX", "", _prefix)
    # Where jobs may write besides TOONQ_OUTPUT_PREFIX, and read from (empty: anywhere that is
    # no output prefix); `toonq.shared.storage.uri.UriPolicy` applies them.
    allowed_output_prefixes: tuple[str, ...] = _setting(
        "TOONQ_ALLOWED_OUTPUT_PREFIXES", (), _prefixes
    )
    allowed_input_prefixes: tuple[str, ...] = _setting(
        "TOONQ_ALLOWED_INPUT_PREFIXES", (), _prefixes
    )
    #: Lets a worker on a database server and a network broker keep jobs' files in file://
    #: prefixes, which it refuses otherwise: only right where every producer and worker mounts
    #: the same folders.
    allow_file_uris: bool = _setting("TOONQ_ALLOW_FILE_URIS", False, _flag)
    # Engine.
    model: str = _setting("TOONQ_MODEL", DEFAULT_MODEL)
    device: str = _setting("TOONQ_DEVICE", "auto")
    precision: str = _setting("TOONQ_PRECISION", "auto", _choice(PRECISIONS))
    resolution: int = _setting(
        "TOONQ_RESOLUTION", DEFAULT_RESOLUTION, _int(minimum=RESOLUTION_MULTIPLE)
    )
    #: The largest resolution a job may ask for: a worker's memory per job grows with its square
    #: (and, compiled, each resolution is a graph of its own).
    max_resolution: int = _setting("TOONQ_MAX_RESOLUTION", 2048, _int(minimum=RESOLUTION_MULTIPLE))
    bg_color: str = _setting("TOONQ_BG_COLOR", DEFAULT_BG_COLOR)
    png_compress_level: int = _setting("TOONQ_PNG_COMPRESS_LEVEL", 1, _int())
    compile_mode: str = _setting("TOONQ_COMPILE", "off", _choice(COMPILE_MODES))
    channels_last: bool = _setting("TOONQ_CHANNELS_LAST", False, _flag)
    max_image_pixels: int = _setting("TOONQ_MAX_IMAGE_PIXELS", 50_000_000, _int(minimum=1))
    max_input_bytes: int = _setting("TOONQ_MAX_INPUT_BYTES", 100 * 1024 * 1024, _int(minimum=1))
    #: An animation's frames, each matted: more is `too_many_frames`, as is a longer running time.
    max_frames: int = _setting("TOONQ_MAX_FRAMES", 300, _int(minimum=1))
    max_animation_s: float = _setting("TOONQ_MAX_ANIMATION_S", 60.0, _float)
    #: Host memory the images of a worker's jobs may take at once (0: from the memory limit).
    memory_budget_mb: int = _setting("TOONQ_MEMORY_BUDGET_MB", 0, _int())
    # Delivery and retries.
    max_attempts: int = _setting("TOONQ_MAX_ATTEMPTS", 5, _int(minimum=1))
    retry_backoff_s: float = _setting("TOONQ_RETRY_BACKOFF_S", 2.0, _float)
    retry_backoff_max_s: float = _setting("TOONQ_RETRY_BACKOFF_MAX_S", 300.0, _float)
    lease_s: int = _setting("TOONQ_LEASE_SECONDS", 60, _int(minimum=1))
    job_timeout_s: int = _setting("TOONQ_JOB_TIMEOUT_S", 900, _int(minimum=1))
    visibility_timeout_s: int = _setting("TOONQ_VISIBILITY_TIMEOUT_S", 3600, _int(minimum=1))
    sweep_interval_s: int = _setting("TOONQ_SWEEP_INTERVAL_S", 15, _int())
    resend_after_s: int = _setting("TOONQ_RESEND_AFTER_S", 21600, _int(minimum=1))
    shutdown_grace_s: float = _setting("TOONQ_SHUTDOWN_GRACE_S", 30.0, _float)
    # Webhooks: a job's `callback_url` is POSTed its outcome, signed with the secret.
    webhook_secret: str | None = _setting("TOONQ_WEBHOOK_SECRET", None, _webhook_secret)
    webhook_max_attempts: int = _setting("TOONQ_WEBHOOK_MAX_ATTEMPTS", 8, _int(minimum=1))
    webhook_timeout_s: float = _setting("TOONQ_WEBHOOK_TIMEOUT_S", 10.0, _float)
    #: The wait before the first retry; each next one waits 4 times longer (at most 6 h).
    webhook_backoff_s: float = _setting("TOONQ_WEBHOOK_BACKOFF_S", 5.0, _float)
    #: Hosts (`host` or `host:port`) a callback may reach although they are loopback, private,
    #: link-local or metadata addresses.
    webhook_allowed_hosts: tuple[str, ...] = _setting(
        "TOONQ_WEBHOOK_ALLOWED_HOSTS", (), _lowered_items
    )
    #: A tenant's jobs sent to the broker and not yet claimed, at most (about one batch): the
    #: rest wait in the database for their tenant's turn (0: sent at once, no fairness).
    tenant_queue_slots: int = _setting("TOONQ_TENANT_QUEUE_SLOTS", 4, _int())
    #: A tenant's jobs sent or running at once, at most, checked when its jobs are released
    #: (0: no cap).
    tenant_max_in_flight: int = _setting("TOONQ_TENANT_MAX_IN_FLIGHT", 0, _int())
    # Pipeline: jobs in flight per worker and the GPU loop's batching (0 = chosen for the device).
    concurrency: int = _setting("TOONQ_CONCURRENCY", 0, _int())
    #: Jobs in their CPU-heavy stages at once, and PyTorch's CPU threads; 0: the CPUs the
    #: process may use (affinity, capped by the cgroup CPU quota).
    cpu_workers: int = _setting("TOONQ_CPU_WORKERS", 0, _int())
    #: Processes that take the jobs' messages and do their CPU work, beside the one that owns
    #: the model and the GPU loop; 1: one process does both; 0: chosen from the device and CPUs.
    job_processes: int = _setting("TOONQ_JOB_PROCESSES", 0, _int())
    #: With job processes: where images are composited, resized and normalised for the model,
    #: and its output turned into alpha mattes (`choices.PREPARE_IN`).
    prepare_in: str = _setting("TOONQ_PREPARE_IN", "auto", _choice(PREPARE_IN))
    max_batch_size: int = _setting("TOONQ_MAX_BATCH_SIZE", 0, _int())
    max_batch_wait_ms: float = _setting("TOONQ_MAX_BATCH_WAIT_MS", 10.0, _float)
    #: Failed batches in a row after which a worker takes its device for broken: it stops taking
    #: jobs and reports not live (0: never).
    max_consecutive_batch_failures: int = _setting(
        "TOONQ_MAX_CONSECUTIVE_BATCH_FAILURES", 5, _int()
    )
    # Operations.
    worker_name: str | None = _setting("TOONQ_WORKER_NAME", None)
    log_format: str = _setting("TOONQ_LOG_FORMAT", "auto", _choice(LOG_FORMATS))
    log_level: str = _setting("TOONQ_LOG_LEVEL", "INFO", _choice(LOG_LEVELS, upper=True))
    metrics_port: int = _setting("TOONQ_METRICS_PORT", 0, _int())
    # All interfaces by default: probes and Prometheus reach a pod from outside.
    metrics_host: str = _setting("TOONQ_METRICS_HOST", "0.0.0.0")
    metrics_queue_depth: bool = _setting("TOONQ_METRICS_QUEUE_DEPTH", False, _flag)
    #: Celery task events on every job (three more messages each). Off by default: Flower
    #: turns them on in the workers it watches through remote control.
    task_events: bool = _setting("TOONQ_TASK_EVENTS", False, _flag)
    liveness_timeout_s: float = _setting("TOONQ_LIVENESS_TIMEOUT_S", 120.0, _float)

    def __post_init__(self) -> None:
        # The embedded defaults live under TOONQ_HOME, made absolute so that a worker started
        # from another folder finds the same database and files.
        home = self.home.expanduser().absolute()
        object.__setattr__(self, "home", home)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{home / 'toonq.db'}")
        if not self.output_prefix:
            object.__setattr__(self, "output_prefix", (home / "outputs").as_uri())

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each environment variable toonq reads, mapped to its field's name."""
        return {f.metadata[VARIABLE]: f.name for f in fields(cls)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f.metadata[VARIABLE])
            if raw:
                values[f.name] = f.metadata[PARSER](f.metadata[VARIABLE], raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if problem := resolution_problem(self.max_resolution):
            raise ConfigurationError(f"TOONQ_MAX_RESOLUTION {problem}")
        if problem := resolution_problem(self.resolution, self.max_resolution):
            raise ConfigurationError(f"TOONQ_RESOLUTION {problem} (TOONQ_MAX_RESOLUTION)")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigurationError("TOONQ_PNG_COMPRESS_LEVEL must be between 0 and 9")
        if self.retry_backoff_max_s >= self.visibility_timeout_s:
            # A countdown longer than the broker's visibility timeout makes Redis redeliver the
            # message while it is still waiting: duplicate runs (kombu #337).
            raise ConfigurationError(
                "TOONQ_RETRY_BACKOFF_MAX_S must be below TOONQ_VISIBILITY_TIMEOUT_S"
            )
        if 0 < self.redis_socket_timeout_s < 2 * KOMBU_BRPOP_TIMEOUT_S:
            raise ConfigurationError(
                f"TOONQ_REDIS_SOCKET_TIMEOUT_S must be 0 or at least {2 * KOMBU_BRPOP_TIMEOUT_S:g}"
                f" (twice kombu's BRPOP timeout), got {self.redis_socket_timeout_s:g}"
            )
        if self.job_timeout_s < self.lease_s:
            raise ConfigurationError("TOONQ_JOB_TIMEOUT_S must be at least TOONQ_LEASE_SECONDS")
        if self.resend_after_s < self.visibility_timeout_s:
            # A message waiting in the queue is not lost: only re-send after Redis would have
            # redelivered an unacknowledged one.
            raise ConfigurationError(
                "TOONQ_RESEND_AFTER_S must be at least TOONQ_VISIBILITY_TIMEOUT_S"
            )

        if self.tenant_max_in_flight > 0 and self.tenant_queue_slots == 0:
            # Without held jobs nothing releases them: the cap could not hold.
            raise ConfigurationError(
                "TOONQ_TENANT_MAX_IN_FLIGHT needs TOONQ_TENANT_QUEUE_SLOTS above 0"
            )

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def is_networked(self) -> bool:
        """Whether producers and workers may be on other machines: the database is a server
        (not a SQLite file) and the broker one too (not a folder or in-process one)."""
        local_broker = self.broker_url.startswith(("filesystem:", "memory:"))
        return not self.database_url.startswith("sqlite") and not local_broker

    @property
    def broker_folder(self) -> Path:
        """Where the embedded broker keeps its messages."""
        return self.home / "broker"
