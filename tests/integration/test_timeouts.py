"""A silent Redis or a hung PostgreSQL statement fails the call that waits on it, in bounded
time, instead of blocking it for ever."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.support import job_spec
from toonq.shared.db.engine import create_db_engine, translate_db_errors
from toonq.shared.errors import DatabaseUnavailableError
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.queue import create_celery_app
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The address of a server that accepts connections and never answers (a Redis behind a
    dead link)."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        host, port = server.getsockname()
        yield f"{host}:{port}"


@pytest.mark.timeout(120)
def test_a_send_to_a_silent_redis_fails_instead_of_blocking(silent_server: str) -> None:
    settings = Settings.from_env(
        {"TOONQ_BROKER_URL": f"redis://{silent_server}/0", "TOONQ_REDIS_SOCKET_TIMEOUT_S": "2"}
    )
    app = create_celery_app(settings)
    store = InMemoryJobStore()
    job, _ = store.create(job_spec(), actor="test")

    assert not Sender(app, store, queue=settings.queue).send(job)
    assert store.get(job.id).sent_at is None  # recovery sends it once Redis is back
    app.close()


def test_a_statement_past_the_timeout_is_cancelled_as_database_unavailable(
    migrated_pg_url: str,
) -> None:
    engine = create_db_engine(migrated_pg_url, statement_timeout_s=0.1)

    with pytest.raises(DatabaseUnavailableError), translate_db_errors(), engine.connect() as db:
        db.execute(text("SELECT pg_sleep(30)"))
    engine.dispose()
