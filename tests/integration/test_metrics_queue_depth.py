"""The queue-depth gauge reads a real Redis broker's priority lists at scrape time."""

from __future__ import annotations

import uuid

from tests.support import scrape
from toonq.shared.queue import create_celery_app, enqueue, queue_lists
from toonq.shared.settings import Settings
from toonq.worker.health import HealthServer
from toonq.worker.metrics import WorkerMetrics, printable_list_name


def test_queue_depth_counts_the_messages_waiting_in_each_priority_list(
    redis_url: str, redis_queue: str, worker_metrics: WorkerMetrics, server: HealthServer
) -> None:
    app = create_celery_app(Settings.from_env({"TOONQ_BROKER_URL": redis_url}))
    # One toonq priority per band (9-7, 6-4, 3-1, 0), in the order of `queue_lists`.
    waiting = {9: 1, 5: 2, 2: 0, 0: 3}
    for priority, count in waiting.items():
        for _ in range(count):
            enqueue(app, uuid.uuid4(), queue=redis_queue, priority=priority)
    app.close()
    collector = worker_metrics.watch_queue_depth(redis_url, queue_lists(redis_queue))

    scraped = scrape(server)
    collector.close()
    depths = [
        scraped.value("toonq_queue_depth", queue=printable_list_name(name))
        for name in queue_lists(redis_queue)
    ]
    assert depths == list(waiting.values())
    assert scraped.value("toonq_metrics_scrape_errors_total", collector="queue_depth") == 0
