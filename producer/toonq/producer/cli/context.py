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
    """Settings and a client, created on first use so that `--help` needs no database.

    A ready `client` may be handed in instead, with its settings (the unit tests run the
    commands on test doubles: `CliRunner().invoke(cli, args, obj=Context(client))`).
    """

    def __init__(self, client: ToonqClient | None = None, *, verbose: bool = False) -> None:
        self._ready_client = client
        #: Whether other libraries' INFO lines are logged too (`toonq --verbose`).
        self.verbose = verbose

    @cached_property
    def settings(self) -> Settings:
        client = self._ready_client
        settings = Settings.from_env() if client is None else client.settings
        configure_logging(fmt=settings.log_format, level=settings.log_level, verbose=self.verbose)
        return settings

    @cached_property
    def client(self) -> ToonqClient:
        settings = self.settings  # logging is configured before the client logs anything
        if self._ready_client is not None:
            return self._ready_client
        return ToonqClient(settings, actor=f"cli:{getpass.getuser()}@{socket.gethostname()}")


pass_context = click.make_pass_decorator(Context, ensure=True)
