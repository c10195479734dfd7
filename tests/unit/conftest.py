"""Test doubles for the unit tests, which need no server: the in-memory job store, Celery on
kombu's in-memory transport, and settings whose files stay in the test's temporary folder.

* `jobstore`: an empty `InMemoryJobStore` reading time from `clock`;
* `settings`: TOONQ_HOME in `tmp_path`, the `memory://` broker, and a queue of the test's own
  (kombu's in-memory queues are shared by the whole process);
* `broker`: a `MemoryBroker` on those settings; `sender`: a `Sender` through it to `jobstore`;
* `client`: a `ToonqClient` on them all, acting as `ACTOR`, its files in TOONQ_HOME.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from toonq.producer import ToonqClient
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.queue import create_celery_app
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import local_roots
from toonq.shared.storage.local import LocalStore

if TYPE_CHECKING:
    from tests.conftest import ManualClock

ACTOR = "cli:ops@laptop"


@dataclass(frozen=True)
class SentMessage:
    """A job's wake-up message as the broker holds it."""

    job_id: uuid.UUID
    #: When a countdown delays it until; None when it is due at once.
    eta: datetime | None


class MemoryBroker:
    """Celery on kombu's in-memory transport (`memory://`), whose queue the test reads back
    through kombu, as a worker would."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_celery_app(settings)
        self.queue = settings.queue

    def take_sent(self) -> list[SentMessage]:
        """The messages waiting in the queue, oldest first, taken off it (acknowledged)."""
        taken: list[SentMessage] = []
        with self.app.connection_for_read() as connection:
            queue = connection.SimpleQueue(self.queue)
            try:
                while True:
                    try:
                        message = queue.get_nowait()
                    except queue.Empty:
                        return taken
                    message.ack()
                    args, _, _ = message.payload
                    eta = message.headers.get("eta")
                    taken.append(
                        SentMessage(
                            uuid.UUID(args[0]), None if eta is None else datetime.fromisoformat(eta)
                        )
                    )
            finally:
                queue.close()

    def close(self) -> None:
        self.take_sent()
        self.app.close()


@pytest.fixture
def jobstore(clock: ManualClock) -> InMemoryJobStore:
    """An empty in-memory job store reading time from `clock`."""
    return InMemoryJobStore(clock=clock)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "TOONQ_HOME": str(tmp_path),
            "TOONQ_BROKER_URL": "memory://",
            "TOONQ_QUEUE": f"unit-{uuid.uuid4().hex[:12]}",
        }
    )


@pytest.fixture
def broker(settings: Settings) -> Iterator[MemoryBroker]:
    broker = MemoryBroker(settings)
    yield broker
    broker.close()


@pytest.fixture
def sender(broker: MemoryBroker, jobstore: InMemoryJobStore) -> Sender:
    return Sender(broker.app, jobstore, queue=broker.queue)


def memory_client(
    settings: Settings, jobstore: InMemoryJobStore, broker: MemoryBroker
) -> ToonqClient:
    """A client on the in-memory job store, the memory broker and files under TOONQ_HOME."""
    return ToonqClient(
        settings,
        actor=ACTOR,
        objects=LocalStore(local_roots(settings)),
        store=jobstore,
        app=broker.app,
    )


@pytest.fixture
def client(
    settings: Settings, jobstore: InMemoryJobStore, broker: MemoryBroker
) -> Iterator[ToonqClient]:
    with memory_client(settings, jobstore, broker) as client:
        yield client
