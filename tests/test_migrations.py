"""The migrations build the schema the models describe, on PostgreSQL and on SQLite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from toonq.shared.db.engine import alembic_config, create_db_engine, downgrade, migrate
from toonq.shared.db.schema import Base

if TYPE_CHECKING:
    from tests.conftest import PostgresServer

TABLES = {"jobs", "job_events"}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each backend."""
    fixture = "fresh_postgres_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


def _state(url: str) -> tuple[set[str], str | None]:
    """The application tables and the Alembic revision of the database at `url`."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names()) & TABLES
            revision = MigrationContext.configure(connection).get_current_revision()
        return tables, revision
    finally:
        engine.dispose()


def test_head_is_the_single_initial_revision() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_heads() == ["0001"]


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    migrate(empty_db_url)
    assert _state(empty_db_url) == (TABLES, "0001")

    downgrade(empty_db_url, "base")
    assert _state(empty_db_url) == (set(), None)

    migrate(empty_db_url)
    assert _state(empty_db_url) == (TABLES, "0001")


def test_models_agree_with_migrations(empty_db_url: str) -> None:
    migrate(empty_db_url)
    engine = create_db_engine(empty_db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


# Alembic does not compare CHECK constraints: compare PostgreSQL's own description of the
# schema that `create_all` builds from the models with the one the migrations build.
_SCHEMA_QUERIES = (
    """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
       WHERE connamespace = 'public'::regnamespace
         AND conrelid::regclass::text <> 'alembic_version'""",
    """SELECT tablename, indexname, indexdef FROM pg_indexes
       WHERE schemaname = 'public' AND tablename <> 'alembic_version'""",
    """SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,
              column_default
       FROM information_schema.columns
       WHERE table_schema = 'public' AND table_name <> 'alembic_version'""",
)


def _pg_schema(url: str) -> set[tuple[object, ...]]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            return {
                tuple(row) for query in _SCHEMA_QUERIES for row in connection.execute(text(query))
            }
    finally:
        engine.dispose()


def test_postgres_constraints_agree_with_models(pg_server: PostgresServer) -> None:
    from_models, from_migrations = pg_server.create_database(), pg_server.create_database()
    try:
        engine = create_db_engine(from_models)
        Base.metadata.create_all(engine)
        engine.dispose()
        migrate(from_migrations)

        models_schema = _pg_schema(from_models)
        assert any(row[1] == "ck_jobs_job_status" for row in models_schema)
        assert models_schema == _pg_schema(from_migrations)
    finally:
        pg_server.drop_database(from_models)
        pg_server.drop_database(from_migrations)
