"""Messages a dead worker took with it: found in Redis's unacknowledged set and sent again."""

from __future__ import annotations

import redis

from tests.support import job_spec
from toonq.shared.dispatch import Dispatcher
from toonq.shared.jobstore import JobStore
from toonq.shared.queue import create_celery_app, queue_lists
from toonq.shared.settings import Settings
from toonq.shared.stranded import UnackedMessages
from toonq.shared.sweeper import sweep


def test_a_received_but_unacknowledged_message_is_found_and_its_job_sent_again(
    jobstore: JobStore, redis_url: str
) -> None:
    settings = Settings.from_env({"TOONQ_BROKER_URL": redis_url, "TOONQ_QUEUE": "stranded"})
    app = create_celery_app(settings)
    dispatcher = Dispatcher(app, jobstore, queue="stranded")
    stranded, claimed = (jobstore.create(job_spec(name), actor="test")[0] for name in ("a", "b"))
    for job in (stranded, claimed):
        assert dispatcher.send(job)
    # A worker receives both messages without acknowledging them, claims one job, and dies.
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("stranded", no_ack=False)
        received = [queue.get(timeout=5), queue.get(timeout=5)]
        assert len(received) == 2
        assert jobstore.claim(claimed.id, worker="dead", lease_s=600) is not None
        unacked = UnackedMessages(redis_url)
        try:
            assert unacked.job_ids(received_before_s=3600) == set()  # too recent to be stranded
            assert unacked.job_ids(received_before_s=0) == {stranded.id, claimed.id}

            sent = sweep(
                jobstore, dispatcher, resend_after_s=3600, unacked=unacked, stranded_after_s=0
            )
            # Only the job still waiting is sent again; the running one is its lease's business.
            assert [job.id for job in sent] == [stranded.id]
            waiting = redis.Redis.from_url(redis_url)
            assert sum(int(waiting.llen(name)) for name in queue_lists("stranded")) == 1
        finally:
            unacked.close()
            queue.close()
    app.close()


def test_foreign_or_malformed_unacknowledged_entries_are_ignored(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    connection.zadd("unacked_index", {"tag-1": 0, "tag-2": 0})
    connection.hset("unacked", "tag-1", b"not json")
    connection.hset(
        "unacked",
        "tag-2",
        b'[{"body": "W1tdXQ==", "headers": {"task": "other.task"}, "properties": {}}, "", ""]',
    )
    unacked = UnackedMessages(redis_url)
    try:
        assert unacked.job_ids(received_before_s=0) == set()
    finally:
        unacked.close()
