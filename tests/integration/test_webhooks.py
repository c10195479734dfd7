"""Webhooks delivered by the workers' deliverer to a real HTTP receiver, from a PostgreSQL job
store: signed as Standard Webhooks says, retried under the same `webhook-id`, never following a
redirect nor going where the policy forbids, and delivered by another deliverer when the one that
took a webhook died."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.integration.test_jobstore import claim, create
from tests.support import WebhookReceiver, succeed
from toonq.shared.job import Job, JobStatus
from toonq.shared.jobstore import JobStore
from toonq.shared.settings import Settings
from toonq.shared.webhooks import verify
from toonq.shared.webhooks.delivery import WebhookDeliverer

if TYPE_CHECKING:
    from tests.conftest import ManualClock

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiving:
        yield receiving


def deliverer(
    store: JobStore, receiver: WebhookReceiver, *, allowed: bool = True
) -> WebhookDeliverer:
    settings = Settings.from_env(
        {
            "TOONQ_WEBHOOK_SECRET": SECRET,
            "TOONQ_WEBHOOK_MAX_ATTEMPTS": "3",
            "TOONQ_WEBHOOK_BACKOFF_S": "5",
            "TOONQ_WEBHOOK_TIMEOUT_S": "5",
            "TOONQ_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}" if allowed else "",
        }
    )
    return WebhookDeliverer(store, settings, actor="w1", secret=SECRET)


def succeeded_job(store: JobStore, receiver: WebhookReceiver) -> Job:
    job = create(store, callback_url=receiver.url)
    assert succeed(store, claim(store, job), model_name="toonout", model_revision="abc123")
    return store.get(job.id)


def test_the_outcome_is_posted_signed_with_the_jobs_json(
    pg_jobstore: JobStore, clock: ManualClock, receiver: WebhookReceiver
) -> None:
    job = succeeded_job(pg_jobstore, receiver)
    clock.advance(1)

    assert deliverer(pg_jobstore, receiver).deliver_due() == 1

    ((headers, body),) = receiver.received
    assert headers["webhook-id"] == job.webhook_id
    assert headers["content-type"] == "application/json"
    timestamp = int(headers["webhook-timestamp"])
    assert verify(SECRET, job.webhook_id or "", timestamp, body, headers["webhook-signature"])
    message = json.loads(body)
    assert message["type"] == "job.succeeded"
    assert message["timestamp"] == job.to_dict()["finished_at"]
    assert message["data"]["id"] == str(job.id)
    assert message["data"]["model"] == "toonout@abc123"
    assert [event["kind"] for event in message["data"]["events"]] == [
        "created",
        "started",
        "succeeded",
    ]
    delivered = pg_jobstore.get(job.id)
    assert delivered.to_dict()["webhook"]["state"] == "sent"
    assert pg_jobstore.events(job.id)[-1].kind == "webhook_sent"
    assert deliverer(pg_jobstore, receiver).deliver_due() == 0  # sent once


def test_failed_attempts_are_retried_with_the_same_id_and_body_then_given_up(
    pg_jobstore: JobStore, clock: ManualClock, receiver: WebhookReceiver
) -> None:
    job = succeeded_job(pg_jobstore, receiver)
    receiver.answers = [500, 302, 503]
    delivering = deliverer(pg_jobstore, receiver)

    for wait in (1, 5 + 1, 20 + 1):  # 5 s, then 4 times longer
        clock.advance(wait)
        assert delivering.deliver_due() == 1
    clock.advance(24 * 3600)
    assert delivering.deliver_due() == 0  # three attempts: given up

    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    bodies = {body for _, body in receiver.received}
    assert (len(receiver.received), ids, len(bodies)) == (3, {job.webhook_id}, 1)
    history = [(e.kind, e.reason) for e in pg_jobstore.events(job.id)[3:]]
    assert history == [
        ("webhook_retry", "answered HTTP 500"),
        ("webhook_retry", "answered HTTP 302"),  # a redirect is not followed
        ("webhook_failed", "answered HTTP 503"),
    ]
    assert [failed.id for failed in pg_jobstore.failed_webhooks()] == [job.id]

    pg_jobstore.resend_webhooks([job.id])
    clock.advance(1)
    assert delivering.deliver_due() == 1
    assert receiver.received[-1][0]["webhook-id"] == job.webhook_id
    assert pg_jobstore.get(job.id).to_dict()["webhook"]["state"] == "sent"


def test_a_webhook_taken_by_a_deliverer_that_died_is_delivered_by_another(
    pg_jobstore: JobStore, clock: ManualClock, receiver: WebhookReceiver
) -> None:
    job = succeeded_job(pg_jobstore, receiver)
    clock.advance(1)
    (taken,) = pg_jobstore.take_due_webhooks(hold_s=40)  # and then its worker died

    assert deliverer(pg_jobstore, receiver).deliver_due() == 0
    clock.advance(41)
    assert deliverer(pg_jobstore, receiver).deliver_due() == 1

    assert [headers["webhook-id"] for headers, _ in receiver.received] == [taken[0].webhook_id]
    assert pg_jobstore.get(job.id).to_dict()["webhook"]["state"] == "sent"


def test_an_address_inside_the_network_is_refused_at_delivery_too(
    pg_jobstore: JobStore, clock: ManualClock, receiver: WebhookReceiver
) -> None:
    """A row written before the host was disallowed (or a name re-pointed since): the address
    the URL resolves to is checked again before each POST."""
    job = succeeded_job(pg_jobstore, receiver)
    clock.advance(1)

    assert deliverer(pg_jobstore, receiver, allowed=False).deliver_due() == 1

    assert receiver.received == []
    (event,) = pg_jobstore.events(job.id)[3:]
    assert event.kind == "webhook_retry"
    assert event.reason is not None
    assert event.reason.startswith("refused: callback host '127.0.0.1' is 127.0.0.1")
    assert pg_jobstore.get(job.id).status == JobStatus.SUCCEEDED
