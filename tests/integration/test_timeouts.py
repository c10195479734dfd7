"""A silent Redis or S3, or a hung PostgreSQL statement, fails the call that waits on it, in
bounded time, instead of blocking it for ever."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from tests.support import job_spec
from toonq.producer import ToonqClient
from toonq.shared.db.engine import create_db_engine, translate_db_errors
from toonq.shared.errors import DatabaseUnavailableError, StorageUnavailableError
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.queue import create_celery_app
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings

if TYPE_CHECKING:
    from tests.servers import SilentServer


@pytest.mark.timeout(120)
def test_a_send_to_a_silent_redis_fails_instead_of_blocking(silent_server: SilentServer) -> None:
    settings = Settings.from_env(
        {
            "TOONQ_BROKER_URL": f"redis://{silent_server.address}/0",
            "TOONQ_REDIS_SOCKET_TIMEOUT_S": "2",
        }
    )
    app = create_celery_app(settings)
    store = InMemoryJobStore()
    job, _ = store.create(job_spec(), actor="test")

    assert not Sender(app, store, queue=settings.queue).send(job)
    assert store.get(job.id).sent_at is None  # recovery sends it once Redis is back
    app.close()


@pytest.mark.usefixtures("aws_env")
def test_a_submit_to_a_silent_s3_fails_as_storage_unavailable_within_its_timeouts(
    silent_server: SilentServer, tmp_path: Path
) -> None:
    endpoint = f"http://{silent_server.address}"
    settings = Settings.from_env(
        {
            "TOONQ_HOME": str(tmp_path / "home"),
            "TOONQ_S3_ENDPOINT_URL": endpoint,
            "TOONQ_S3_CONNECT_TIMEOUT_S": "1",
            "TOONQ_S3_READ_TIMEOUT_S": "1",
            # The workers' retries: a submit asks once whatever this says.
            "TOONQ_S3_MAX_ATTEMPTS": "10",
            "TOONQ_OUTPUT_PREFIX": "s3://bucket/out",
        }
    )

    with ToonqClient(settings) as client:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match=re.escape(endpoint)) as raised:
            client.submit("s3://bucket/in.png")
        waited = time.monotonic() - started

    assert raised.value.code == "storage_unavailable"
    assert silent_server.connections() == 1
    # Bounded by connect + read timeouts (2 s); the margin is for a loaded machine.
    assert waited < 3 * 2


def test_a_statement_past_the_timeout_is_cancelled_as_database_unavailable(
    migrated_pg_url: str,
) -> None:
    engine = create_db_engine(migrated_pg_url, statement_timeout_s=0.1)

    with pytest.raises(DatabaseUnavailableError), translate_db_errors(), engine.connect() as db:
        db.execute(text("SELECT pg_sleep(30)"))
    engine.dispose()
