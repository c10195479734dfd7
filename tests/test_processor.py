"""`process_job` decisions that need no object store: messages that arrive too early."""

from __future__ import annotations

from datetime import timedelta

import redis

from tests.conftest import ManualClock
from tests.support import job_spec
from toonq.shared.job import JobStatus, Outcome
from toonq.shared.jobstore import JobStore
from toonq.shared.queue import create_celery_app
from toonq.shared.recovery import Sender
from toonq.shared.settings import Settings
from toonq.shared.storage import open_store
from toonq.worker.batcher import InferenceBatcher
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.weights import load_model
from toonq.worker.lease import LeaseKeeper
from toonq.worker.processor import WorkerContext, process_job


def test_a_retry_message_that_arrives_before_its_backoff_is_rescheduled_not_run(
    jobstore: JobStore, clock: ManualClock, redis_url: str
) -> None:
    settings = Settings.from_env({"TOONQ_BROKER_URL": redis_url, "TOONQ_QUEUE": "early"})
    app = create_celery_app(settings)
    engine = MattingEngine(load_model("random:tiny"), device="cpu", resolution=64)
    ctx = WorkerContext(
        settings=settings,
        store=jobstore,
        objects=open_store(settings),
        engine=engine,
        batcher=InferenceBatcher(
            engine.stack_batch, engine.run_batch, max_batch_size=1, max_wait_s=0
        ),
        leases=LeaseKeeper(jobstore, lease_s=60, job_timeout_s=900),
        sender=Sender(app, jobstore, queue="early"),
        worker_name="w1",
    )
    job, _ = jobstore.create(job_spec("a"), actor="test")
    first = jobstore.claim(job.id, worker="w1", lease_s=60)
    assert first is not None
    assert jobstore.mark_retrying(
        first,
        error_code="storage_unavailable",
        error_message="503",
        next_attempt_at=clock() + timedelta(seconds=30),
    )

    assert process_job(ctx, job.id) == Outcome.SKIPPED

    after = jobstore.get(job.id)
    assert (after.status, after.attempts) == (JobStatus.RETRYING, 1)
    assert after.enqueued_at is not None  # announced again, for when it is due
    queued = redis.Redis.from_url(redis_url)
    assert sum(int(queued.llen(key)) for key in queued.scan_iter("early*")) == 1
    app.close()
