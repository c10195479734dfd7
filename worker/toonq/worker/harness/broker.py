"""Removing one queue from a Redis broker that others may share: its lists, kombu's bookkeeping
for it and its unacknowledged messages, and nothing else (a test run must not flush a database
it does not own)."""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Final, cast

import redis

from toonq.shared.queue import queue_lists
from toonq.shared.recovery import UNACKED_HASH, UNACKED_INDEX

#: kombu's Redis transport keeps a queue's bindings under these keys (named after its exchange,
#: which toonq names after the queue).
_KOMBU_BINDING_KEYS: Final = ("_kombu.binding.{}", "_kombu.binding_permanent.{}")


def delete_queue(broker_url: str, queue: str) -> None:
    """Delete `queue`'s keys and its unacknowledged messages; a broker that is down (a test may
    have left it so) is left as it is."""
    connection = redis.Redis.from_url(broker_url, socket_timeout=5)
    with connection, suppress(redis.RedisError):
        connection.delete(*queue_lists(queue), *(key.format(queue) for key in _KOMBU_BINDING_KEYS))
        tags = [
            tag
            for tag, raw in cast(dict[bytes, bytes], connection.hgetall(UNACKED_HASH)).items()
            if _routing_key(raw) == queue
        ]
        if tags:
            connection.hdel(UNACKED_HASH, *tags)
            connection.zrem(UNACKED_INDEX, *tags)


def _routing_key(raw: bytes) -> str | None:
    """The routing key of an unacknowledged message, stored as [message, exchange, routing key]
    (toonq routes each queue's messages by its name)."""
    try:
        routing_key = json.loads(raw)[2]
    except (ValueError, LookupError, TypeError):
        return None
    return routing_key if isinstance(routing_key, str) else None
