"""The state the CLI commands share: settings and a client, created on first use."""

from __future__ import annotations

import functools
import getpass
import socket
from collections.abc import Callable
from functools import cached_property
from typing import ParamSpec, TypeVar

import click

from toonq.producer import ToonqClient
from toonq.shared.errors import ConfigurationError
from toonq.shared.logging import configure_logging
from toonq.shared.settings import Settings


class Context:
    """Settings and a client, created on first use so that `--help` needs no database."""

    @cached_property
    def settings(self) -> Settings:
        settings = Settings.from_env()
        configure_logging(fmt=settings.log_format, level=settings.log_level)
        return settings

    @cached_property
    def client(self) -> ToonqClient:
        return ToonqClient(self.settings, actor=f"cli:{getpass.getuser()}@{socket.gethostname()}")


pass_context = click.make_pass_decorator(Context, ensure=True)

P = ParamSpec("P")
R = TypeVar("R")


def needs_engine(command: Callable[P, R]) -> Callable[P, R]:
    """For commands that run the matting engine: a clear error, not an ImportError, where only
    the producer is installed (torch comes with the `worker` extra)."""

    @functools.wraps(command)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "this command runs the matting engine, which needs the worker extra: "
                "pip install 'toonq[worker]'"
            ) from None
        return command(*args, **kwargs)

    return checked
