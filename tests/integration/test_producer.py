"""The producer client against real PostgreSQL, Redis and S3, with no worker running: what it
writes, what it enqueues, and what it rejects before writing anything."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, update

from tests.support import png_bytes, run_json, run_toonq
from toonq.producer import Job, SubmitRequest, ToonqClient, WaitTimeoutError
from toonq.producer.cli.main import cli
from toonq.shared.db.schema import JobRow
from toonq.shared.errors import (
    IdempotencyConflictError,
    InvalidRequestError,
    InvalidURIError,
    UnknownBucketError,
)
from toonq.shared.job import JobStatus, utc_now
from toonq.shared.queue import queue_lists
from toonq.shared.recovery import RecoveryReason, recover
from toonq.shared.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def client(producer_settings: Settings) -> Iterator[ToonqClient]:
    with ToonqClient(producer_settings) as client:
        yield client


@pytest.fixture
def queue(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def queued_messages(queue: redis.Redis, redis_queue: str) -> Callable[[], int]:
    """How many messages wait in the test's queue."""
    # Kombu's Redis transport keeps each priority level in a list of its own.
    return lambda: sum(int(queue.llen(name)) for name in queue_lists(redis_queue))


def test_submit_writes_a_queued_job_and_sends_one_message(
    client: ToonqClient, queued_messages: Callable[[], int], s3_bucket: str
) -> None:
    job = client.submit(f"s3://{s3_bucket}/in/a.png", bg_color="#FFF", format="webp", priority=5)

    assert job.status == JobStatus.QUEUED
    assert job.output_uri == f"s3://{s3_bucket}/out/{job.id}.webp"
    assert job.params.bg_color == "#ffffff"
    assert job.sent_at is not None
    assert queued_messages() == 1


def test_resubmitting_with_the_same_idempotency_key_enqueues_nothing(
    client: ToonqClient, queued_messages: Callable[[], int], s3_bucket: str
) -> None:
    uri = f"s3://{s3_bucket}/in/a.png"
    first = client.submit(uri, idempotency_key="sticker-42")
    second = client.submit(uri, idempotency_key="sticker-42")

    assert second.id == first.id
    assert queued_messages() == 1
    with pytest.raises(IdempotencyConflictError):
        client.submit(f"s3://{s3_bucket}/in/other.png", idempotency_key="sticker-42")


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("https://example.com/a.png", InvalidURIError),
        ("s3://", InvalidURIError),
        ("s3://bucket-only", InvalidURIError),
        ("s3://no-such-bucket-toonq/a.png", UnknownBucketError),
    ],
)
def test_bad_input_is_rejected_before_any_row_is_written(
    client: ToonqClient, queued_messages: Callable[[], int], uri: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        client.submit(uri)
    assert client.list() == []
    assert queued_messages() == 0


def test_submit_many_rejects_the_whole_batch_when_one_request_is_bad(
    client: ToonqClient, s3_bucket: str
) -> None:
    requests = [
        SubmitRequest(f"s3://{s3_bucket}/in/a.png"),
        SubmitRequest(f"s3://{s3_bucket}/in/b.png", resolution=100),
    ]
    with pytest.raises(InvalidRequestError, match="multiple of 32"):
        client.submit_many(requests)
    assert client.list() == []

    jobs = client.submit_many([requests[0], SubmitRequest(f"s3://{s3_bucket}/in/c.png")])
    assert [job.status for job in jobs] == [JobStatus.QUEUED, JobStatus.QUEUED]


def test_submit_many_returns_each_request_s_job_sent_once(
    client: ToonqClient, queued_messages: Callable[[], int], s3_bucket: str
) -> None:
    uris = [f"s3://{s3_bucket}/in/{n}.png" for n in range(20)]
    requests = [SubmitRequest(uri, idempotency_key=f"key-{n}") for n, uri in enumerate(uris)]

    jobs = client.submit_many(requests)
    again = client.submit_many(requests)  # found by their keys: nothing is sent again

    assert [job.input_uri for job in jobs] == uris
    assert all(job.sent_at is not None for job in jobs)  # read back after the sends
    assert again == jobs
    assert queued_messages() == 20


@pytest.fixture
def unsent_job(producer_settings: Settings, s3_bucket: str, s3_server: str) -> Job:
    """A job submitted while the broker was down: committed, but its message never sent."""
    broker_down = Settings.from_env(
        {
            "TOONQ_DATABASE_URL": producer_settings.database_url,
            "TOONQ_BROKER_URL": "redis://127.0.0.1:1/0",  # nothing listens there
            "TOONQ_QUEUE": producer_settings.queue,
            "TOONQ_S3_ENDPOINT_URL": s3_server,
            "TOONQ_OUTPUT_PREFIX": producer_settings.output_prefix,
        }
    )
    with ToonqClient(broker_down) as offline:
        offline.sender.app.conf.broker_connection_max_retries = 0
        offline.sender.app.conf.broker_transport_options |= {"max_retries": 0}
        return offline.submit(f"s3://{s3_bucket}/in/a.png")


def test_a_job_whose_message_could_not_be_sent_is_sent_by_recovery(
    producer_settings: Settings, queued_messages: Callable[[], int], unsent_job: Job
) -> None:
    job = unsent_job
    assert job.status == JobStatus.QUEUED
    assert job.sent_at is None  # accepted and durable, but not yet sent

    with ToonqClient(producer_settings) as client:
        sent = recover(client.store, client.sender, resend_after_s=3600, unsent_grace_s=0)
        assert [(item.job.id, item.reason) for item in sent] == [(job.id, RecoveryReason.UNSENT)]
        assert client.get(job.id).sent_at is not None
        assert recover(client.store, client.sender, resend_after_s=3600, unsent_grace_s=0) == []
    assert queued_messages() == 1


def test_toonq_recover_sends_an_unsent_job_and_says_why(
    producer_settings: Settings,
    pg_database: Engine,
    queued_messages: Callable[[], int],
    unsent_job: Job,
) -> None:
    # Unsent for longer than the grace a sender has to send its job itself.
    an_hour_ago = utc_now() - timedelta(hours=1)
    with pg_database.begin() as connection:
        connection.execute(
            update(JobRow).where(JobRow.id == unsent_job.id).values(updated_at=an_hour_ago)
        )
    env = {
        "TOONQ_DATABASE_URL": producer_settings.database_url,
        "TOONQ_BROKER_URL": producer_settings.broker_url,
        "TOONQ_QUEUE": producer_settings.queue,
        "TOONQ_OUTPUT_PREFIX": producer_settings.output_prefix,
    }

    result = CliRunner().invoke(cli, ["recover", "--json"], env=env)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "recovered": 1,
        "by_status": {"queued": 1},
        "by_reason": {"unsent": 1},
        "forced": 0,
        "waiting": {"queued": 1},
        "in_queue": 1,  # the message it just sent
        "held": 0,
        "next_due_at": None,
        "last_due_at": None,
    }
    assert queued_messages() == 1


def test_toonq_recover_after_redis_lost_its_data_says_when_and_force_sends_now(
    client: ToonqClient,
    producer_settings: Settings,
    queue: redis.Redis,
    queued_messages: Callable[[], int],
    s3_bucket: str,
) -> None:
    job = client.submit(f"s3://{s3_bucket}/in/a.png")
    queue.delete(*queue_lists(producer_settings.queue))  # Redis restarted without its data
    env = dict(
        os.environ,
        TOONQ_DATABASE_URL=producer_settings.database_url,
        TOONQ_BROKER_URL=producer_settings.broker_url,
        TOONQ_QUEUE=producer_settings.queue,
    )
    sent_at = client.get(job.id).sent_at
    assert sent_at is not None
    # A worker that took the message would have claimed the job within a lease.
    due_at = sent_at + timedelta(seconds=producer_settings.lease_s)
    due = due_at.isoformat()

    waiting = run_json("recover", env=env)
    told = run_toonq("recover", env=env)
    forced = run_json("recover", "--force", env=env)
    again = run_json("recover", "--force", env=env)

    assert waiting == {
        "recovered": 0,
        "by_status": {},
        "by_reason": {},
        "forced": 0,
        "waiting": {"queued": 1},
        "in_queue": 0,
        "held": 0,
        "next_due_at": due,
        "last_due_at": due,
    }
    assert (told.returncode, told.stderr) == (0, "")
    assert told.stdout.splitlines()[1:] == [
        "still waiting: 1 queued (0 with a message in the queue)",
        f"if no worker takes them, they are sent again when due: {due_at:%Y-%m-%d %H:%M:%S} UTC "
        "(`toonq recover --force` sends the queued ones now)",
    ]
    assert (forced["recovered"], forced["forced"], forced["by_reason"]) == (1, 1, {"lost": 1})
    assert queued_messages() == 1
    # Its message is in the queue now: nothing to force, nothing due.
    assert (again["recovered"], again["in_queue"], again["next_due_at"]) == (0, 1, None)
    assert queued_messages() == 1


def test_cancel_and_wait(client: ToonqClient, s3_bucket: str) -> None:
    job = client.submit(f"s3://{s3_bucket}/in/a.png")
    with pytest.raises(WaitTimeoutError):
        client.wait(job.id, timeout=0.2, poll_interval=0.05)

    cancelled = client.cancel(job.id, reason="test")

    assert cancelled.status == JobStatus.CANCELLED
    assert client.wait(job.id, timeout=1).status == JobStatus.CANCELLED
    assert [event.kind for event in client.events(job.id)] == ["created", "cancelled"]


def test_wait_on_postgresql_returns_when_the_job_finishes_not_at_the_next_read(
    client: ToonqClient, s3_bucket: str
) -> None:
    """The waiter reads its job again only every 10 s unless told: finishing in well under
    `timeout` proves the notification woke it."""
    job = client.submit(f"s3://{s3_bucket}/in/a.png")
    cancelled_at: list[float] = []

    def cancel_soon() -> None:
        time.sleep(0.3)
        client.cancel(job.id)
        cancelled_at.append(time.monotonic())

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    finished = client.wait(job.id, timeout=5, poll_interval=60)
    returned_at = time.monotonic()
    canceller.join()

    assert finished.status == JobStatus.CANCELLED
    assert returned_at - cancelled_at[0] < 5


def test_watch_on_postgresql_hears_each_job_that_finishes(
    client: ToonqClient, s3_bucket: str
) -> None:
    jobs = [client.submit(f"s3://{s3_bucket}/in/{n}.png") for n in range(3)]
    watched = client.watch(timeout=5, poll_interval=60)
    heard: list[uuid.UUID] = []

    def cancel_all() -> None:
        time.sleep(0.3)
        for job in jobs:
            client.cancel(job.id)

    canceller = threading.Thread(target=cancel_all)
    canceller.start()
    for job in watched:
        heard.append(job.id)
        if len(heard) == len(jobs):
            break
    canceller.join()

    assert heard == [job.id for job in jobs]


def test_file_uris_need_no_bucket(producer_settings: Settings) -> None:
    """Beside S3 outputs, where a file:// prefix is allowed."""
    home = producer_settings.home
    outputs = home / "outputs"
    home.mkdir(parents=True, exist_ok=True)
    source = home / "in.png"
    source.write_bytes(png_bytes())
    settings = replace(producer_settings, allowed_output_prefixes=(outputs.as_uri(),))

    with ToonqClient(settings) as client:
        job = client.submit(source.as_uri(), output_uri=(outputs / "out.png").as_uri())

    assert job.input_uri == source.as_uri()


def test_unknown_job_ids_are_typed_errors(client: ToonqClient) -> None:
    with pytest.raises(InvalidRequestError, match="not a job id"):
        client.get("not-a-uuid")
    with pytest.raises(Exception, match=str(uuid.UUID(int=1))) as caught:
        client.get(uuid.UUID(int=1))
    assert getattr(caught.value, "code", None) == "job_not_found"


def test_higher_priorities_are_served_first(client: ToonqClient, s3_bucket: str) -> None:
    jobs = {
        priority: client.submit(f"s3://{s3_bucket}/in/p{priority}.png", priority=priority)
        for priority in (0, 5, 9)
    }
    app = client.sender.app
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(client.settings.queue)
        served = []
        for _ in jobs:
            message = queue.get(timeout=5)
            served.append(message.payload[0][0])  # the task's args: [job id]
            message.ack()
        queue.close()
    assert served == [str(jobs[9].id), str(jobs[5].id), str(jobs[0].id)]


def test_bulk_submit_of_a_prefix_then_a_rerun_submits_nothing_new(
    client: ToonqClient,
    producer_settings: Settings,
    queued_messages: Callable[[], int],
    s3_bucket: str,
    s3_client: S3Client,
) -> None:
    for key in ("a.png", "in/b.PNG", "in/sub/c.jpg", "in/notes.md", "out/earlier.png"):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=png_bytes((8, 8)))
    env = {
        "TOONQ_DATABASE_URL": producer_settings.database_url,
        "TOONQ_BROKER_URL": producer_settings.broker_url,
        "TOONQ_QUEUE": producer_settings.queue,
        "TOONQ_S3_ENDPOINT_URL": producer_settings.s3_endpoint_url or "",
        "TOONQ_OUTPUT_PREFIX": producer_settings.output_prefix,
    }
    args = ["submit", "--recursive", f"s3://{s3_bucket}/", "--idempotency-prefix", "w49", "--json"]

    first = CliRunner().invoke(cli, args, env=env)
    again = CliRunner().invoke(cli, args, env=env)

    assert first.exit_code == 0, first.output
    created = [json.loads(line) for line in first.stdout.splitlines()]
    assert [(job["input_uri"], job["created"]) for job in created] == [
        (f"s3://{s3_bucket}/{key}", True) for key in ("a.png", "in/b.PNG", "in/sub/c.jpg")
    ]
    assert first.stderr == (
        f"note: skipped 1 object(s) under the output prefix {producer_settings.output_prefix}: "
        "jobs do not read what jobs write\n"
        "submitted 3 job(s): 3 new, 0 already there\n"
    )
    assert again.exit_code == 0, again.output
    found = [json.loads(line) for line in again.stdout.splitlines()]
    assert [(job["id"], job["created"]) for job in found] == [(job["id"], False) for job in created]
    assert again.stderr.endswith("submitted 3 job(s): 0 new, 3 already there\n")
    assert len(client.list()) == 3
    assert queued_messages() == 3
