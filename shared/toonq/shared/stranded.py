"""Messages that a dead worker took with it.

With the Redis broker, a message a worker has received but not yet acknowledged waits in kombu's
`unacked` hash (its receipt time in the `unacked_index` sorted set) until Redis hands it out again
after the visibility timeout, an hour by default. A worker that dies after receiving a message but
before claiming its job leaves no lease behind: the job stays queued with its message marked sent.
This reads the job ids of messages received longer ago than a lease, so that the sweeper can send
those jobs again; the claim makes any duplicate harmless.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, cast

import redis

from toonq.shared.logging import get_logger
from toonq.shared.queue import TASK_NAME

log = get_logger(__name__)

#: Where kombu's Redis transport keeps unacknowledged messages (its default key names).
UNACKED_HASH = "unacked"
UNACKED_INDEX = "unacked_index"


class UnackedMessages:
    """The unacknowledged toonq messages of one Redis broker."""

    def __init__(self, broker_url: str) -> None:
        self._redis = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)

    def job_ids(self, *, received_before_s: float) -> set[uuid.UUID]:
        """Job ids of the messages received more than `received_before_s` seconds ago and
        still unacknowledged."""
        cutoff = time.time() - received_before_s
        tags: list[bytes] = cast(
            list[bytes], self._redis.zrangebyscore(UNACKED_INDEX, "-inf", cutoff)
        )
        if not tags:
            return set()
        job_ids = set()
        for raw in cast(list[bytes | None], self._redis.hmget(UNACKED_HASH, tags)):
            job_id = _job_id(raw) if raw is not None else None
            if job_id is not None:
                job_ids.add(job_id)
        return job_ids

    def close(self) -> None:
        self._redis.close()


def _job_id(raw: bytes) -> uuid.UUID | None:
    """The job id of one stored message, or None if it is not a well-formed toonq message."""
    try:
        message: dict[str, Any] = json.loads(raw)[0]
        if message["headers"].get("task") != TASK_NAME:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return uuid.UUID(args[0])
    except (ValueError, LookupError, TypeError, AttributeError):
        log.warning("unacked_message_unreadable", preview=repr(raw[:120]))
        return None
