"""The message a finished job's callback receives: a body that stays the same across the
attempts of one delivery, and headers signed at each attempt (whose timestamp is the attempt's,
so that a receiver can refuse old replays)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from toonq.shared.job import EventKind, Job, JobEvent, iso_utc
from toonq.shared.webhooks.signing import sign

#: Events that describe the webhook itself are left out of its body, which must not change
#: from one attempt to the next.
_WEBHOOK_KINDS = frozenset(
    {EventKind.WEBHOOK_RETRY, EventKind.WEBHOOK_SENT, EventKind.WEBHOOK_FAILED}
)


@dataclass(frozen=True)
class WebhookMessage:
    webhook_id: str
    body: bytes

    def headers(self, secret: str, timestamp: int) -> dict[str, str]:
        """The Standard Webhooks headers of an attempt made at `timestamp` (Unix seconds)."""
        return {
            "content-type": "application/json",
            "webhook-id": self.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, self.webhook_id, timestamp, self.body),
        }


def message_for(job: Job, events: Iterable[JobEvent]) -> WebhookMessage:
    """The message announcing `job`'s outcome: `{"type": "job.<status>", "timestamp": <when it
    finished>, "data": <the job's JSON as `toonq status --json` prints it>}`."""
    if job.webhook_id is None or job.finished_at is None:
        raise ValueError(f"job {job.id} has no webhook due")
    data = job.to_dict() | {
        "events": [event.to_dict() for event in events if event.kind not in _WEBHOOK_KINDS]
    }
    # The webhook's own progress is no part of the outcome either.
    data["webhook"] = None
    payload = {
        "type": f"job.{job.status.value}",
        "timestamp": iso_utc(job.finished_at),
        "data": data,
    }
    body = json.dumps(payload, separators=(",", ":"), sort_keys=False).encode()
    return WebhookMessage(job.webhook_id, body)
