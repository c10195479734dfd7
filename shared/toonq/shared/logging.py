"""Structured logging: JSON lines in production, readable colours on a terminal.

Configure once at process start with `configure_logging`; then bind context instead of formatting
it into messages (`log.bind(job_id=...)` or `bound_job(job_id)`), so every line of a job's work
carries its `job_id`. Standard-library loggers (Celery, botocore...) go through the same renderer,
and every line goes through `redact_secrets` before it is written. Other libraries' lines below
WARNING (botocore's "Found credentials...", Alembic's steps, Celery's start-up) are written only
when `verbose`: what a command prints is then toonq's own.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import structlog

REDACTED: Final = "***"

_SECRET_WORDS: Final = (
    r"pass(?:word|wd|phrase)|secret|token|credential|api[_-]?key|private[_-]?key|cookie"
)
#: Keys whose values are never written, wherever they appear (nested dicts included).
_SENSITIVE_KEY: Final = re.compile(rf"{_SECRET_WORDS}|authorization", re.IGNORECASE)
#: The password of a URL's user info: postgresql://user:PASSWORD@host, redis://:PASSWORD@host.
#: Greedy up to the last "@" before the path, since passwords sometimes hold a raw "@".
_URL_PASSWORD: Final = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s/]*@", re.IGNORECASE)
#: `password=...`, `"token": "..."` and the like inside text (libpq DSNs, dumped dicts).
_TEXT_SECRET: Final = re.compile(
    rf"(\b[\w-]*(?:{_SECRET_WORDS})[\w-]*[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&}}]+", re.IGNORECASE
)
#: `Authorization: Bearer ...` (the scheme word is kept, the credentials are not).
_AUTHORIZATION: Final = re.compile(
    r"(\bauthorization[\"']?\s*[=:]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)[^\s\"',;]+",
    re.IGNORECASE,
)

#: Libraries whose warnings are progress rather than problems, and the level they show from
#: when not verbose: the Hugging Face hub warns at each retry of a download whose failure toonq
#: reports itself (`model_unavailable`).
_LIBRARY_THRESHOLDS: Final = {"huggingface_hub": logging.ERROR}

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


_verbose = False


def is_verbose() -> bool:
    """Whether `configure_logging` was last asked for other libraries' lines too."""
    return _verbose


def configure_logging(*, fmt: str = "auto", level: str = "INFO", verbose: bool = False) -> None:
    """Route structlog and the standard library through one handler on stderr.

    `fmt` is "json", "console" or "auto" (console when stderr is a terminal, JSON otherwise).
    `level` is the root logger's; unless `verbose`, other libraries' lines below WARNING (the
    Hugging Face hub's below ERROR) are dropped.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # First: a line below the level costs one check, not the whole chain.
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become plain text (no local variables, which may hold secrets) that
            # the redaction below sees too; on a terminal as well.
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    global _verbose
    _verbose = verbose
    if not verbose:
        handler.addFilter(_quiet_libraries)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    library = record.name.partition(".")[0]
    if library == "toonq":
        return True
    return record.levelno >= _LIBRARY_THRESHOLDS.get(library, logging.WARNING)


def redact_secrets(
    _: Any, __: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A structlog processor that masks credentials in every value of a log line: the values of
    keys such as `password`, `secret`, `token`, `aws_secret_access_key` or `authorization`, and
    inside any text the passwords of URLs (`postgresql://user:***@host`) and `key=value` pairs.

    Values that are not JSON scalars, lists or dicts are written as their repr, as the renderers
    would do, so that a password inside an object's repr is masked as well."""
    return {key: _redact(key, value) for key, value in event_dict.items()}


def _redact(key: object, value: Any) -> Any:
    if isinstance(key, str) and _SENSITIVE_KEY.search(key) and value is not None:
        return REDACTED
    if isinstance(value, str):
        return _redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: _redact(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(None, item) for item in value]
    return _redact_text(repr(value))


def _redact_text(text: str) -> str:
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    text = _AUTHORIZATION.sub(rf"\1{REDACTED}", text)
    return _TEXT_SECRET.sub(rf"\1{REDACTED}", text)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


@contextmanager
def bound_job(job_id: object, **context: Any) -> Iterator[None]:
    """Bind `job_id` (and any extra context) to every log line emitted inside the block,
    including lines from libraries that log through the standard library."""
    with structlog.contextvars.bound_contextvars(job_id=str(job_id), **context):
        yield
