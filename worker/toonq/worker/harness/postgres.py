"""Throw-away databases on a PostgreSQL server."""

from __future__ import annotations

import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from toonq.shared.settings import normalize_database_url


class PostgresServer:
    """Creates uniquely named databases (`prefix` and a random suffix) through the admin
    connection `admin_url`, and drops them again."""

    def __init__(self, admin_url: str, *, prefix: str = "toonq") -> None:
        self.admin_url = normalize_database_url(admin_url)
        self.prefix = prefix
        self._admin = create_engine(
            self.admin_url,
            isolation_level="AUTOCOMMIT",  # CREATE/DROP DATABASE cannot run in a transaction
            connect_args={"connect_timeout": 5},
        )

    def ping(self) -> None:
        """Raise sqlalchemy's OperationalError unless the server answers."""
        with self._admin.connect() as connection:
            connection.execute(text("SELECT 1"))

    def create_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        name = f"{self.prefix}_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as connection:
            # FORCE: a connection left open somewhere must not keep the database alive.
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def dispose(self) -> None:
        """Close the admin connections (the next call opens new ones)."""
        self._admin.dispose()
