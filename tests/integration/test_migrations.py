"""The migrations build the schema the models describe, on PostgreSQL and on SQLite."""

from __future__ import annotations

import functools
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, text

from toonq.shared.db.engine import (
    alembic_config,
    create_db_engine,
    downgrade,
    migrate,
)
from toonq.shared.db.schema import Base
from toonq.shared.job import Job, JobParams, JobSpec, JobStatus
from toonq.shared.jobstore import SqlJobStore

if TYPE_CHECKING:
    from toonq.worker.harness.postgres import PostgresServer

TABLES = {"jobs", "job_events"}
HEAD = "0012"


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


def test_the_revisions_form_one_line() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_heads() == [HEAD]
    assert [revision.revision for revision in script.walk_revisions()] == [
        HEAD,
        "0011",
        "0010",
        "0009",
        "0008",
        "0007",
        "0006",
        "0005",
        "0004",
        "0003",
        "0002",
        "0001",
    ]


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    migrate(empty_db_url)
    assert _state(empty_db_url) == (TABLES, HEAD)

    downgrade(empty_db_url, "base")
    assert _state(empty_db_url) == (set(), None)

    migrate(empty_db_url)
    assert _state(empty_db_url) == (TABLES, HEAD)


def _kinds(url: str) -> list[str]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(text("SELECT kind FROM job_events ORDER BY id")))
    finally:
        engine.dispose()


def test_hand_backs_are_requeued_events_before_0002(empty_db_url: str) -> None:
    migrate(empty_db_url)
    engine = create_db_engine(empty_db_url)
    try:
        store = SqlJobStore(engine)
        job, _ = store.create(
            JobSpec(
                input_uri="s3://in/a.png",
                output_uri="s3://out/a.png",
                params=JobParams(bg_color="#808080", format="png", resolution=64),
                max_attempts=3,
            ),
            actor="producer",
        )
        claim = store.claim(job.id, worker="w1", lease_s=60)
        assert claim is not None
        assert store.hand_back(claim, reason="shutting down") is not None
    finally:
        engine.dispose()
    assert _kinds(empty_db_url) == ["created", "started", "handed_back"]

    downgrade(empty_db_url, "0001")
    assert _kinds(empty_db_url) == ["created", "started", "requeued"]

    migrate(empty_db_url)
    assert _kinds(empty_db_url) == ["created", "started", "requeued"]


def _job_after_migrating(url: str, **old_row: Any) -> Job:
    """The job the store reads of a job row inserted at the database's revision, naming no
    column added since (`old_row` changes its values), once the database is migrated to the
    head."""
    now, job_id = datetime.now(UTC), uuid.uuid4()
    row = {
        "id": job_id,
        "status": JobStatus.QUEUED,
        "input_uri": "s3://in/a.png",
        "output_uri": "s3://out/a.png",
        "bg_color": "#808080",
        "output_format": "png",
        "resolution": 64,
        "refine_foreground": False,
        "mask_only": False,
        "priority": 0,
        "attempts": 0,
        "max_attempts": 3,
        "created_at": now,
        "updated_at": now,
    } | old_row
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(Base.metadata.tables["jobs"]).values(row))

        migrate(url)

        return SqlJobStore(engine).get(job_id)
    finally:
        engine.dispose()


def test_a_mask_asked_refined_before_0003_is_read_unrefined(empty_db_url: str) -> None:
    migrate(empty_db_url, "0002")
    params = _job_after_migrating(
        empty_db_url,
        status=JobStatus.SUCCEEDED,
        refine_foreground=True,  # ignored on a mask, refused since
        mask_only=True,
    ).params
    assert (params.mask_only, params.refine_foreground) == (True, False)


def test_a_sent_message_before_0005_is_both_the_marker_and_enqueued_at(empty_db_url: str) -> None:
    migrate(empty_db_url, "0004")
    now, job_id = datetime.now(UTC), uuid.uuid4()
    engine = create_db_engine(empty_db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO jobs (id, status, input_uri, output_uri, bg_color,"
                    " output_format, resolution, refine_foreground, mask_only, priority,"
                    " attempts, max_attempts, created_at, updated_at, enqueued_at) VALUES"
                    " (:id, 'queued', 's3://in/a.png', 's3://out/a.png', '#808080', 'png', 64,"
                    " false, false, 0, 0, 3, :now, :now, :now)"
                ),
                {"id": job_id if engine.dialect.name == "postgresql" else job_id.hex, "now": now},
            )

        migrate(empty_db_url)

        job = SqlJobStore(engine).get(job_id)
    finally:
        engine.dispose()
    assert job.sent_at == job.enqueued_at == now


def test_jobs_from_before_0007_keep_the_models_alpha(empty_db_url: str) -> None:
    migrate(empty_db_url, "0006")
    # Written as a producer of that release writes: no respect_input_alpha column to name.
    params = _job_after_migrating(empty_db_url).params
    assert params.respect_input_alpha is False


def test_jobs_from_before_0008_have_no_committed_output(empty_db_url: str) -> None:
    migrate(empty_db_url, "0007")

    job = _job_after_migrating(empty_db_url)

    assert (job.staged_output_uri, job.staged_result, job.staged_output) == (None, None, None)
    downgrade(empty_db_url, "0007")
    assert _state(empty_db_url) == (TABLES, "0007")


def test_jobs_from_before_0010_have_no_tenant(empty_db_url: str) -> None:
    migrate(empty_db_url, "0009")

    assert _job_after_migrating(empty_db_url).tenant is None
    downgrade(empty_db_url, "0009")
    assert _state(empty_db_url) == (TABLES, "0009")


def test_jobs_from_before_0011_read_with_the_sticker_defaults(empty_db_url: str) -> None:
    migrate(empty_db_url, "0010")
    # Written as a producer of that release writes: no sticker column to name.
    params = _job_after_migrating(empty_db_url).params

    assert params == JobParams(bg_color="#808080", format="png", resolution=64)
    assert (params.preset, params.trim, params.margin, params.outline, params.shadow) == (
        None,
        False,
        0,
        0,
        False,
    )
    assert params.temporal_smoothing is True
    downgrade(empty_db_url, "0010")
    assert _state(empty_db_url) == (TABLES, "0010")


def test_models_agree_with_migrations(empty_db_url: str) -> None:
    migrate(empty_db_url)
    engine = create_db_engine(empty_db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def _constraints(url: str) -> dict[str, list[Any]]:
    """The CHECK constraints, indexes, keys and unique constraints of the tables, as SQLAlchemy
    reads them back from the database at `url`."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            return {
                table: sorted(
                    map(
                        # A partial index's condition is a clause object: compare its SQL.
                        functools.partial(json.dumps, default=str, sort_keys=True),
                        [
                            *inspector.get_check_constraints(table),
                            *inspector.get_indexes(table),
                            *inspector.get_foreign_keys(table),
                            *inspector.get_unique_constraints(table),
                            inspector.get_pk_constraint(table),
                        ],
                    )
                )
                for table in TABLES
            }
    finally:
        engine.dispose()


def test_sqlite_constraints_agree_with_models(tmp_path: Path) -> None:
    # Alembic does not compare CHECK constraints, and SQLite keeps them in each table's SQL.
    from_models, from_migrations = (f"sqlite:///{tmp_path / name}" for name in ("m.db", "a.db"))
    engine = create_db_engine(from_models)
    Base.metadata.create_all(engine)
    engine.dispose()
    migrate(from_migrations)

    models_constraints = _constraints(from_models)
    assert "handed_back" in str(models_constraints["job_events"])
    assert models_constraints == _constraints(from_migrations)


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
