"""The lease keeper: heartbeats while a job runs, the job timeout, and the hand-back at shutdown."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from tests.support import job_spec, succeed
from toonq.shared.job import Claim, EventKind, Job, JobStatus
from toonq.shared.jobstore import JobStore
from toonq.shared.recovery import Sender
from toonq.worker.lease import ClaimLostError, LeaseKeeper

if TYPE_CHECKING:
    from tests.conftest import ManualClock
    from tests.unit.conftest import MemoryBroker


def claimed(store: JobStore, *, worker: str = "w1") -> Claim:
    job, _ = store.create(job_spec(), actor="test")
    claim = store.claim(job.id, worker=worker, lease_s=1)
    assert claim is not None
    return claim


def test_a_held_claim_is_renewed_and_a_released_one_is_not(
    jobstore: JobStore, clock: ManualClock
) -> None:
    keeper = LeaseKeeper(jobstore, lease_s=0.6, job_timeout_s=60)
    keeper.start()
    try:
        claim = claimed(jobstore)
        with keeper.holding(claim):
            time.sleep(1.5)  # well past the first lease
            assert jobstore.get(claim.job.id).lease_expires_at > clock()  # type: ignore[operator]
        time.sleep(1.0)
        assert jobstore.get(claim.job.id).lease_expires_at < clock()  # type: ignore[operator]
    finally:
        keeper.stop()


def test_an_attempt_past_the_job_timeout_loses_its_lease(
    jobstore: JobStore, clock: ManualClock
) -> None:
    keeper = LeaseKeeper(jobstore, lease_s=0.6, job_timeout_s=0.5)
    keeper.start()
    try:
        claim = claimed(jobstore)
        with keeper.holding(claim):
            time.sleep(1.5)
            assert jobstore.get(claim.job.id).lease_expires_at < clock()  # type: ignore[operator]
    finally:
        keeper.stop()


def test_hand_back_requeues_held_jobs_without_spending_the_attempt(
    jobstore: JobStore, sender: Sender, broker: MemoryBroker
) -> None:
    keeper = LeaseKeeper(jobstore, lease_s=60, job_timeout_s=900)
    held, finished = claimed(jobstore), claimed(jobstore)
    with keeper.holding(held), keeper.holding(finished):
        assert succeed(jobstore, finished)
        handed = keeper.hand_back_all(sender, reason="shutting down")

    assert handed == 1  # the finished job stays finished
    job = jobstore.get(held.job.id)
    assert (job.status, job.attempts, job.worker) == (JobStatus.QUEUED, 0, None)
    assert job.sent_at is not None  # announced again at once
    last = jobstore.events(job.id)[-1]
    assert (last.kind, last.reason) == (EventKind.HANDED_BACK, "shutting down")
    assert [message.job_id for message in broker.take_sent()] == [job.id]
    # The worker that handed the job back can no longer record an outcome for it.
    assert not jobstore.mark_failed(held, error_code="internal_error", error_message="late")
    assert jobstore.claim(job.id, worker="w2", lease_s=60) is not None


def test_a_claim_the_store_refuses_to_renew_is_lost_and_its_work_stops(
    jobstore: JobStore,
) -> None:
    keeper = LeaseKeeper(jobstore, lease_s=60, job_timeout_s=900)
    kept, cancelled = claimed(jobstore), claimed(jobstore)
    with keeper.holding(kept), keeper.holding(cancelled):
        jobstore.cancel(cancelled.job.id, actor="cli:ops@laptop")

        keeper.renew()

        keeper.check(kept)
        with pytest.raises(ClaimLostError):
            keeper.check(cancelled)


def test_a_new_attempt_of_a_job_is_not_taken_for_its_lost_one(jobstore: JobStore) -> None:
    keeper = LeaseKeeper(jobstore, lease_s=60, job_timeout_s=900)
    stale = claimed(jobstore)
    with keeper.holding(stale):
        jobstore.cancel(stale.job.id, actor="cli:ops@laptop")
        keeper.renew()
        jobstore.requeue([stale.job.id], actor="cli:ops@laptop")
        fresh = jobstore.claim(stale.job.id, worker="w2", lease_s=60)
        assert fresh is not None
        assert fresh.attempt == stale.attempt  # a requeue starts the count again

        with keeper.holding(fresh):
            keeper.renew()
            keeper.check(fresh)
            with pytest.raises(ClaimLostError):
                keeper.check(stale)


class SenderFailingOnce(Sender):
    """A sender whose first send raises something its broker handling does not expect."""

    def __init__(self, sender: Sender) -> None:
        super().__init__(sender.app, sender.store, queue=sender.queue)
        self.failed = False

    def send(self, job: Job, *, countdown: float | None = None) -> bool:
        if not self.failed:
            self.failed = True
            raise RuntimeError("unexpected broker error")
        return super().send(job, countdown=countdown)


def test_a_failed_send_does_not_stop_the_hand_back_of_the_others(
    jobstore: JobStore, sender: Sender, broker: MemoryBroker
) -> None:
    keeper = LeaseKeeper(jobstore, lease_s=60, job_timeout_s=900)
    first, second = claimed(jobstore), claimed(jobstore)
    with keeper.holding(first), keeper.holding(second):
        handed = keeper.hand_back_all(SenderFailingOnce(sender), reason="shutting down")

    assert handed == 2
    jobs = [jobstore.get(claim.job.id) for claim in (first, second)]
    assert [job.status for job in jobs] == [JobStatus.QUEUED, JobStatus.QUEUED]
    # One message went out; the other job waits for recovery, as an unsent job.
    assert [job.sent_at is None for job in jobs] == [True, False]
    assert [message.job_id for message in broker.take_sent()] == [second.job.id]
