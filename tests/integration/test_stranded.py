"""Messages a dead worker took with it, found in Redis and sent again; messages still waiting
in the queue are left alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
import redis
from celery import Celery

from tests.support import job_spec
from toonq.shared.job import Job
from toonq.shared.jobstore import JobStore
from toonq.shared.queue import create_celery_app, queue_lists
from toonq.shared.recovery import QueueMessages, RecoveryReason, Sender, recover
from toonq.shared.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import ManualClock


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = create_celery_app(Settings.from_env({"TOONQ_BROKER_URL": redis_url}))
    yield app
    app.close()


@pytest.fixture
def messages(redis_url: str, redis_queue: str) -> Iterator[QueueMessages]:
    messages = QueueMessages(redis_url, redis_queue, socket_timeout_s=5)
    yield messages
    messages.close()


def sent_jobs(jobstore: JobStore, sender: Sender, count: int, *, priority: int = 0) -> list[Job]:
    specs = [replace(job_spec(), priority=priority) for _ in range(count)]
    jobs = [jobstore.create(spec, actor="test")[0] for spec in specs]
    for job in jobs:
        assert sender.send(job)
    return jobs


def waiting(redis_url: str, queue: str) -> int:
    connection = redis.Redis.from_url(redis_url)
    return sum(int(connection.llen(name)) for name in queue_lists(queue))


def recover_stranded(jobstore: JobStore, sender: Sender, messages: QueueMessages) -> list[Job]:
    """The jobs one recovery pass sends again, each of which it must find stranded."""
    recovered = recover(
        jobstore,
        sender,
        resend_after_s=3600,
        messages=messages,
        stranded_after_s=0,
    )
    assert {item.reason for item in recovered} <= {RecoveryReason.STRANDED}
    return [item.job for item in recovered]


def test_a_received_but_unacknowledged_message_of_a_waiting_job_is_sent_again(
    jobstore: JobStore, app: Celery, messages: QueueMessages, redis_url: str, redis_queue: str
) -> None:
    sender = Sender(app, jobstore, queue=redis_queue)
    stranded, claimed = sent_jobs(jobstore, sender, 2)
    # A worker receives both messages without acknowledging them, claims one job, and dies.
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(redis_queue, no_ack=False)
        try:
            queue.get(timeout=5)
            queue.get(timeout=5)
            assert jobstore.claim(claimed.id, worker="dead", lease_s=600) is not None
            assert messages.received_job_ids() == {stranded.id, claimed.id}
            time.sleep(0.05)

            sent = recover_stranded(jobstore, sender, messages)

            # Only the job still waiting is sent again; the running one is its lease's business.
            assert [job.id for job in sent] == [stranded.id]
            assert waiting(redis_url, redis_queue) == 1
        finally:
            queue.close()


def test_a_message_popped_and_lost_before_it_was_recorded_is_sent_again(
    jobstore: JobStore, app: Celery, messages: QueueMessages, redis_url: str, redis_queue: str
) -> None:
    sender = Sender(app, jobstore, queue=redis_queue)
    (lost,) = sent_jobs(jobstore, sender, 1)
    time.sleep(1.2)  # more than the clock-skew margin between the two sends
    (behind,) = sent_jobs(jobstore, sender, 1)
    # A worker popped the first message and was killed before recording it as unacknowledged.
    popped = redis.Redis.from_url(redis_url).rpop(queue_lists(redis_queue)[-1])
    assert popped is not None

    sent = recover_stranded(jobstore, sender, messages)

    # The second message still waits in the list: its job is left alone.
    assert [job.id for job in sent] == [lost.id]
    assert behind.id not in {job.id for job in sent}
    assert waiting(redis_url, redis_queue) == 2


def test_a_backlog_at_one_priority_does_not_hide_a_lost_message_at_another(
    jobstore: JobStore, app: Celery, messages: QueueMessages, redis_url: str, redis_queue: str
) -> None:
    sender = Sender(app, jobstore, queue=redis_queue)
    sent_jobs(jobstore, sender, 1, priority=0)  # a standing backlog at priority 0
    (urgent,) = sent_jobs(jobstore, sender, 1, priority=9)
    # A worker popped the urgent message (its list is served first) and was killed.
    assert redis.Redis.from_url(redis_url).rpop(queue_lists(redis_queue)[0]) is not None

    sent = recover_stranded(jobstore, sender, messages)

    # The older priority-0 message still waits in a list of its own: it says nothing of this one.
    assert [job.id for job in sent] == [urgent.id]
    assert waiting(redis_url, redis_queue) == 2


def test_a_lost_reclaim_message_of_a_lapsed_lease_is_sent_again(
    jobstore: JobStore,
    app: Celery,
    messages: QueueMessages,
    redis_url: str,
    redis_queue: str,
    clock: ManualClock,
) -> None:
    sender = Sender(app, jobstore, queue=redis_queue)
    lost, behind = (jobstore.create(job_spec(), actor="test")[0] for _ in range(2))
    for job in (lost, behind):
        assert jobstore.claim(job.id, worker="dead", lease_s=60) is not None
    clock.advance(61)
    assert sender.send(lost)  # the message that will reclaim it
    clock.advance(2)  # more than the clock-skew margin between the two sends
    assert sender.send(behind)
    # A worker popped the first reclaim message and was killed before recording it.
    assert redis.Redis.from_url(redis_url).rpop(queue_lists(redis_queue)[-1]) is not None

    sent = recover_stranded(jobstore, sender, messages)

    # The second reclaim message still waits in the list: its job is left alone.
    assert [job.id for job in sent] == [lost.id]
    assert waiting(redis_url, redis_queue) == 2


def test_messages_still_waiting_in_the_queue_are_not_sent_again(
    jobstore: JobStore, app: Celery, messages: QueueMessages, redis_url: str, redis_queue: str
) -> None:
    sender = Sender(app, jobstore, queue=redis_queue)
    sent_jobs(jobstore, sender, 3)

    assert recover_stranded(jobstore, sender, messages) == []
    assert waiting(redis_url, redis_queue) == 3


def test_foreign_or_malformed_entries_are_ignored(
    redis_url: str, redis_queue: str, messages: QueueMessages
) -> None:
    connection = redis.Redis.from_url(redis_url)
    # Routed to the test's queue, so that they go with it.
    malformed, foreign = f"{redis_queue}-1", f"{redis_queue}-2"
    connection.zadd("unacked_index", {malformed: 0, foreign: 0})
    connection.hset("unacked", malformed, f'["not a message", "", "{redis_queue}"]')
    connection.hset(
        "unacked",
        foreign,
        '[{"body": "W1tdXQ==", "headers": {"task": "other.task"}, "properties": {}}, "", '
        f'"{redis_queue}"]',
    )
    connection.rpush(queue_lists(redis_queue)[0], b"not json either")
    assert messages.received_job_ids() == set()
    # Of unknown age: counted as the oldest possible, so that nothing is taken for lost.
    assert messages.oldest_waiting_sent_at() == {(7, 9): 0.0}
