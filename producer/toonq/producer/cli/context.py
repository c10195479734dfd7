"""The state the CLI commands share: settings and a client, created on first use."""

from __future__ import annotations

import getpass
import socket
from functools import cached_property

import click

from toonq.producer.client import ToonqClient
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
