"""Messages that a dead worker took with it.

A worker that dies after taking a message but before claiming its job leaves no lease behind: the
job stays queued with its message marked sent. With the Redis broker this happens two ways:

* the message was received and waits, unacknowledged, in kombu's `unacked` hash (its receipt time
  in the `unacked_index` sorted set) until Redis hands it out again after the visibility timeout,
  an hour by default;
* the worker was killed between Redis popping the message off the list and recording it as
  unacknowledged: the message is gone.

Both are found the same way. A queue's Redis lists are first in, first out, so a message sent
before the oldest one still waiting has been handed out. A job still queued whose message was
sent before that, more than a lease ago, and that no worker received within the last lease, has
lost its message: the sweeper sends it again, and the claim makes any duplicate harmless.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, cast

import redis

from toonq.shared.logging import get_logger
from toonq.shared.queue import SENT_AT_HEADER, TASK_NAME, queue_lists
from toonq.shared.settings import Settings

log = get_logger(__name__)

#: Where kombu's Redis transport keeps unacknowledged messages (its default key names).
UNACKED_HASH = "unacked"
UNACKED_INDEX = "unacked_index"


class QueueMessages:
    """One toonq queue's messages on a Redis broker: those waiting in its lists, and those
    received but not yet acknowledged."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self._redis = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
        self._lists = queue_lists(queue)

    @classmethod
    def of(cls, settings: Settings) -> QueueMessages | None:
        """The queue's messages, or None with the embedded broker (which has no such sets)."""
        return None if settings.is_embedded_broker else cls(settings.broker_url, settings.queue)

    def received_job_ids(
        self, *, since: float = float("-inf"), until: float | None = None
    ) -> set[uuid.UUID]:
        """Job ids of the unacknowledged messages received between `since` and `until` (Unix
        seconds; `until` defaults to now)."""
        until = time.time() if until is None else until
        tags = cast(list[bytes], self._redis.zrangebyscore(UNACKED_INDEX, since, until))
        if not tags:
            return set()
        job_ids = set()
        for raw in cast(list[bytes | None], self._redis.hmget(UNACKED_HASH, tags)):
            message = _message(raw) if raw is not None else None
            if message is not None:
                job_ids.add(message[0])
        return job_ids

    def oldest_waiting_sent_at(self) -> float | None:
        """When the oldest message still waiting in the queue was sent (Unix seconds), or None
        when it is empty. A message without the sent-at header (from an older producer)
        counts as sent at the epoch: nothing is then taken for lost until it has left."""
        pipe = self._redis.pipeline()
        for name in self._lists:
            pipe.lindex(name, -1)  # kombu pushes on the left and pops on the right
        oldest: float | None = None
        for raw in cast(list[bytes | None], pipe.execute()):
            if raw is None:
                continue
            message = _message(raw, wrapped=False)
            sent_at = message[1] if message is not None and message[1] is not None else 0.0
            oldest = sent_at if oldest is None else min(oldest, sent_at)
        return oldest

    def close(self) -> None:
        self._redis.close()


def _message(raw: bytes, *, wrapped: bool = True) -> tuple[uuid.UUID, float | None] | None:
    """The job id and sent-at time of one stored message (in the unacked hash, messages are
    wrapped with their exchange and routing key), or None if it is not a toonq message."""
    try:
        loaded = json.loads(raw)
        message: dict[str, Any] = loaded[0] if wrapped else loaded
        headers = message["headers"]
        if headers.get("task") != TASK_NAME:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        job_id = uuid.UUID(json.loads(body)[0][0])
        sent_at = headers.get(SENT_AT_HEADER)
        return job_id, float(sent_at) if sent_at is not None else None
    except (ValueError, LookupError, TypeError, AttributeError):
        log.warning("queued_message_unreadable", preview=repr(raw[:120]))
        return None
