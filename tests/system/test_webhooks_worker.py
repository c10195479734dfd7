"""Webhooks from a real `toonq worker` process: the worker that records a job's outcome is not
the only one that can announce it, and a webhook outlives the worker that first tried it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.conftest import StartCluster
from tests.support import WebhookReceiver, png_bytes
from toonq.shared.job import EventKind, JobStatus
from toonq.shared.webhooks import verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WAIT_S = 120


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiving:
        yield receiving


@pytest.fixture(scope="module")
def system(
    start_cluster: StartCluster, receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Cluster:
    from toonq.worker.engine.weights import random_model

    model: Path = tmp_path_factory.mktemp("model") / "tiny"
    random_model("tiny").save_pretrained(model)
    return start_cluster(
        "webhook-worker-1",
        TOONQ_MODEL=str(model),
        TOONQ_RESOLUTION="64",
        TOONQ_SWEEP_INTERVAL_S="0",
        TOONQ_WEBHOOK_SECRET=SECRET,
        TOONQ_WEBHOOK_ALLOWED_HOSTS=f"127.0.0.1:{receiver.port}",
        TOONQ_WEBHOOK_BACKOFF_S="6",
    )


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_webhook_is_delivered_by_the_next_worker_when_the_first_one_died(
    system: Cluster, receiver: WebhookReceiver
) -> None:
    receiver.answers = [503]  # the first attempt fails: retried 6 s later
    job = system.client.submit(
        system.put_input("hook.png", png_bytes((32, 32))), callback_url=receiver.url
    )
    done = system.client.wait(job.id, timeout=WAIT_S)
    assert done.status == JobStatus.SUCCEEDED
    wait_until(lambda: EventKind.WEBHOOK_RETRY in system.event_kinds(job.id), "the first attempt")

    system.worker("webhook-worker-1").kill()
    system.start_workers("webhook-worker-2")
    wait_until(lambda: EventKind.WEBHOOK_SENT in system.event_kinds(job.id), "the delivery")

    assert [headers["webhook-id"] for headers, _ in receiver.received] == [done.webhook_id] * 2
    headers, body = receiver.received[-1]
    assert verify(
        SECRET,
        headers["webhook-id"],
        int(headers["webhook-timestamp"]),
        body,
        headers["webhook-signature"],
    )
    sent = system.client.events(job.id)[-1]
    assert (sent.kind, sent.actor) == (EventKind.WEBHOOK_SENT, "webhook-worker-2")
