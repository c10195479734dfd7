"""Alembic environment: run by `toonq.shared.db.engine.migrate`, which passes the database URL in
`config.attributes["url"]` (toonq ships no alembic.ini)."""

from __future__ import annotations

from alembic import context

from toonq.shared.db.engine import create_db_engine
from toonq.shared.db.schema import Base
from toonq.shared.errors import ConfigurationError


def run_migrations_online() -> None:
    url = context.config.attributes.get("url")
    if not url:
        raise ConfigurationError('no database URL: pass it in config.attributes["url"]')
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                # SQLite cannot ALTER most things: later migrations copy and swap tables instead.
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise ConfigurationError("offline (--sql) migrations are not supported")
run_migrations_online()
