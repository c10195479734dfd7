"""Tenants served in turn, end to end: a real `toonq worker` (the tiny random model on CPU)
against PostgreSQL, Redis and S3, with a tenant's backlog of hundreds of jobs."""

from __future__ import annotations

import pytest

from tests.cluster import Cluster
from tests.conftest import StartCluster
from toonq.producer import SubmitRequest
from toonq.shared.job import JobStatus

WAIT_S = 600
BACKLOG = 300
#: A worker's batch, and its jobs in flight: the bound on how long B waits is about one batch.
BATCH = 4


@pytest.fixture(scope="module")
def system(start_cluster: StartCluster) -> Cluster:
    return start_cluster(
        "tenants-worker",
        TOONQ_CONCURRENCY=str(BATCH),
        TOONQ_MAX_BATCH_SIZE=str(BATCH),
        TOONQ_TENANT_QUEUE_SLOTS=str(BATCH),
        TOONQ_SWEEP_INTERVAL_S="1",
    )


def test_a_tenants_backlog_delays_another_tenants_job_by_about_one_batch(
    system: Cluster,
) -> None:
    uri = system.put_input("tenant.png")
    client = system.client
    backlog = client.submit_in_batches(SubmitRequest(uri, tenant="A") for _ in range(BACKLOG))
    late = client.submit(uri, tenant="B")

    finished = list(client.wait_all([late.id, *(item.job.id for item in backlog)], timeout=WAIT_S))

    assert {job.status for job in finished} == {JobStatus.SUCCEEDED}
    finished_at = {job.id: job.finished_at for job in finished if job.finished_at is not None}
    b_finished_at = finished_at[late.id]
    a_before_b = sum(finished_at[item.job.id] < b_finished_at for item in backlog)
    assert a_before_b < 30, f"{a_before_b} of A's jobs finished before B's"  # before A's 30th
    system.audit().assert_sound(BACKLOG + 1)
