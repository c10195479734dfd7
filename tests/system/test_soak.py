"""The soak test at the size of every test run: 150 jobs through three workers, two of which are
SIGKILLed mid-job and restarted. `make soak` runs it at full size (`python -m tests.soak`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster import running_cluster
from tests.servers import PrivatePostgres, PrivateRedis
from tests.soak import SoakPlan, run_soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PLAN = SoakPlan(jobs=150, workers=3, kills=2, rate=5.0, drain_timeout_s=60)
#: The jobs of a killed worker come back through their leases: within a lease, a recovery pass
#: and the backlog of the queue, not after the broker's visibility timeout (an hour).
MAX_RECOVERY_S = 60


def test_killed_workers_lose_and_repeat_no_job(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, s3_server: str, tmp_path: Path
) -> None:
    with running_cluster(
        postgres_admin_url=private_postgres.url,
        broker_url=private_redis.url,
        s3_endpoint=s3_server,
        log_dir=tmp_path,
        env=PLAN.worker_env(),
    ) as cluster:
        result = run_soak(cluster, PLAN)
    summary = result.summary()
    print(json.dumps(summary))  # the figures, for `pytest -s`

    result.audit.assert_sound(PLAN.jobs)
    assert summary["succeeded"] == PLAN.jobs
    assert summary["kills"] == summary["restarts"] == PLAN.kills
    assert summary["jobs_held_by_killed_workers"], "no kill caught a job in hand"
    assert result.max_recovery_s is not None
    assert result.max_recovery_s < MAX_RECOVERY_S, summary
