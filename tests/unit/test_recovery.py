"""Sending jobs' messages and recovering the jobs whose message went missing, on the in-memory
job store and the memory broker. Stranded messages need Redis: see
`tests/integration/test_stranded.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.support import job_spec
from toonq.shared.job import Job
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.queue import create_celery_app
from toonq.shared.recovery import UNSENT_GRACE_S, RecoveryReason, Sender, recover
from toonq.shared.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import ManualClock
    from tests.unit.conftest import MemoryBroker

RESEND_AFTER_S = 3600
LEASE_S = 60


def created(jobstore: InMemoryJobStore) -> Job:
    job, _ = jobstore.create(job_spec(), actor="test")
    return job


def sent(jobstore: InMemoryJobStore, sender: Sender) -> Job:
    job = created(jobstore)
    assert sender.send(job)
    return job


def test_send_stamps_the_job_and_hands_its_message_to_the_broker(
    jobstore: InMemoryJobStore, sender: Sender, broker: MemoryBroker
) -> None:
    job = created(jobstore)

    assert sender.send(job)

    assert jobstore.get(job.id).sent_at is not None
    assert [message.job_id for message in broker.take_sent()] == [job.id]


def test_send_to_an_unreachable_broker_leaves_the_job_unsent(
    jobstore: InMemoryJobStore, settings: Settings
) -> None:
    # Nothing listens on port 1; the publish fails at once, without retries.
    unreachable = create_celery_app(
        Settings.from_env({"TOONQ_BROKER_URL": "redis://127.0.0.1:1/0"})
    )
    unreachable.conf.task_publish_retry = False
    unreachable.conf.broker_connection_max_retries = 0
    unreachable.conf.broker_transport_options |= {"max_retries": 0}
    job = created(jobstore)

    assert not Sender(unreachable, jobstore, queue=settings.queue).send(job)

    assert jobstore.get(job.id).sent_at is None
    unreachable.close()


def test_recover_sends_each_job_without_a_live_message_once_and_says_why(
    jobstore: InMemoryJobStore, sender: Sender, broker: MemoryBroker, clock: ManualClock
) -> None:
    lost = sent(jobstore, sender)
    running = sent(jobstore, sender)
    assert jobstore.claim(running.id, worker="dead", lease_s=LEASE_S) is not None
    clock.advance(RESEND_AFTER_S - 10)
    sent(jobstore, sender)  # sent lately
    unsent = created(jobstore)
    broker.take_sent()
    clock.advance(UNSENT_GRACE_S + 11)  # past the grace of `unsent`, an hour after `lost`

    recovered = recover(jobstore, sender, resend_after_s=RESEND_AFTER_S)

    assert {item.job.id: item.reason for item in recovered} == {
        unsent.id: RecoveryReason.UNSENT,
        running.id: RecoveryReason.LEASE_EXPIRED,
        lost.id: RecoveryReason.LOST,
    }
    assert sorted(message.job_id for message in broker.take_sent()) == sorted(
        item.job.id for item in recovered
    )
    for item in recovered:
        assert jobstore.get(item.job.id).sent_at is not None
    # Once sent, they are left alone until that message is presumed lost too.
    assert recover(jobstore, sender, resend_after_s=RESEND_AFTER_S) == []
    assert broker.take_sent() == []


def test_recover_leaves_alone_the_jobs_whose_message_is_recent(
    jobstore: InMemoryJobStore, sender: Sender, broker: MemoryBroker, clock: ManualClock
) -> None:
    sent(jobstore, sender)
    running = created(jobstore)
    assert jobstore.claim(running.id, worker="w1", lease_s=LEASE_S) is not None
    unsent = created(jobstore)
    broker.take_sent()
    clock.advance(UNSENT_GRACE_S - 1)  # its sender may still be about to send it

    assert recover(jobstore, sender, resend_after_s=RESEND_AFTER_S) == []
    assert broker.take_sent() == []
    assert jobstore.get(unsent.id).sent_at is None


def test_a_lost_reclaim_message_is_sent_again_once_a_lease_while_the_job_stays_unclaimed(
    jobstore: InMemoryJobStore, sender: Sender, broker: MemoryBroker, clock: ManualClock
) -> None:
    running = sent(jobstore, sender)
    assert jobstore.claim(running.id, worker="dead", lease_s=LEASE_S) is not None
    clock.advance(LEASE_S + 1)

    def recovered() -> list[tuple[object, RecoveryReason]]:
        passed = recover(jobstore, sender, resend_after_s=RESEND_AFTER_S, stranded_after_s=LEASE_S)
        return [(item.job.id, item.reason) for item in passed]

    assert recovered() == [(running.id, RecoveryReason.LEASE_EXPIRED)]
    broker.take_sent()  # that message is lost too
    clock.advance(LEASE_S - 1)
    assert recovered() == []  # not once a pass
    clock.advance(2)
    assert recovered() == [(running.id, RecoveryReason.LEASE_EXPIRED)]
    assert recovered() == []
    assert [message.job_id for message in broker.take_sent()] == [running.id]
