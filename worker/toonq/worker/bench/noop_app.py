"""The Celery app of the queue section's yardstick: a no-op task on toonq's Celery settings.

Run by `python -m celery -A toonq.worker.bench.noop_app worker ...` with the deployment's
environment (broker and queue as for `toonq worker`). Each run of the task prints a line with
its completion time, which the bench reads back from the worker's log.
"""

from __future__ import annotations

import sys
import time

from toonq.shared.queue import create_celery_app
from toonq.shared.settings import Settings

NOOP_TASK = "toonq.bench.noop"
#: The start of the line each run of the task prints, followed by its Unix time.
DONE_MARK = "noop-done"

app = create_celery_app(Settings.from_env())


@app.task(name=NOOP_TASK, acks_late=True)
def noop() -> None:
    # The real stdout: Celery turns print() into log records.
    stdout = sys.__stdout__
    assert stdout is not None
    stdout.write(f"{DONE_MARK} {time.time()}\n")
    stdout.flush()
