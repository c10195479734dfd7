"""Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
where the key is the base64 part of a `whsec_...` secret."""

from __future__ import annotations

import base64
import hashlib
import hmac

SCHEME = "v1"


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header of a message."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return f"{SCHEME},{base64.b64encode(digest).decode()}"


def verify(secret: str, webhook_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether one of the space-separated signatures of `header` signs the message (what a
    receiver checks, besides the timestamp's age)."""
    expected = sign(secret, webhook_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split())
