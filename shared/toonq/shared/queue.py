"""The queue contract both sides share: the Celery app, the task name and the message shape.

A message carries exactly one thing, the job id as a string. Everything else (input, output,
parameters, attempts) is read from the database, which is the source of truth: a message is only
a wake-up call and may be duplicated or redelivered at will. The producer sends by task name and
never imports the worker (nor torch).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from celery import Celery

from toonq.shared.choices import MAX_PRIORITY
from toonq.shared.settings import Settings

TASK_NAME = "toonq.matte"
#: Message header: when the message was sent (Unix seconds), so that recovery can tell
#: which messages a queue has already handed out (see `toonq.shared.recovery`).
SENT_AT_HEADER = "toonq_sent_at"
PRIORITY_STEPS = [0, 3, 6, 9]


#: kombu's separator between a queue's name and the priority step of its extra Redis lists.
PRIORITY_SEPARATOR = "\x06\x16"


def queue_lists(queue: str) -> list[str]:
    """The Redis lists a queue's messages wait in, most urgent first (toonq priority 9-7,
    6-4, 3-1, then 0): what a queue-depth gauge or autoscaler has to count."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def priority_bands() -> list[tuple[int, int]]:
    """The toonq priorities (lowest, highest) whose messages wait in each of `queue_lists`, in
    the same order: kombu files a message under the largest step at or below its priority."""
    ends = [*PRIORITY_STEPS[1:], MAX_PRIORITY + 1]
    return [
        (_kombu_priority(end - 1), _kombu_priority(step))
        for step, end in zip(PRIORITY_STEPS, ends, strict=True)
    ]


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded_broker:
        folder = settings.broker_folder
        for sub in ("in", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "in"),
            "data_folder_out": str(folder / "in"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    socket_timeout = settings.redis_socket_timeout_s or None
    return {
        # A silent Redis fails a send after this rather than blocking it; consuming is safe, as
        # the timeout outlasts the BRPOP's own (Settings.validate).
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        # Unacked messages of a lost worker come back after this long; retries never wait
        # longer than it (Settings.validate), or Redis would redeliver them early.
        "visibility_timeout": settings.visibility_timeout_s,
        "queue_order_strategy": "priority",
        # Four bands, one Redis list each ("matting" then "matting\x06\x163", "...6", "...9"):
        # toonq priorities 9-7 are served first, then 6-4, 3-1, and 0.
        "priority_steps": PRIORITY_STEPS,
    }


def create_celery_app(settings: Settings) -> Celery:
    """Build the Celery app for `settings`: JSON only, results never stored (PostgreSQL holds
    job state), late acks with a prefetch of one so a message is acknowledged only after its job
    reached a recorded outcome."""
    app = Celery("toonq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=settings.queue,
        task_routes={TASK_NAME: {"queue": settings.queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Task events cost three messages a job; Flower enables them (remote control) in the
        # workers it watches. The folder broker of the embedded mode has no fanout for either.
        worker_send_task_events=settings.task_events and not settings.is_embedded_broker,
        task_send_sent_event=settings.task_events and not settings.is_embedded_broker,
        worker_enable_remote_control=not settings.is_embedded_broker,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
        task_default_priority=_kombu_priority(0),
    )
    return app


def _kombu_priority(priority: int) -> int:
    # The Redis transport serves smaller numbers first; toonq's scale reads the other way.
    return MAX_PRIORITY - priority


def enqueue(
    app: Celery,
    job_id: uuid.UUID,
    *,
    queue: str,
    priority: int = 0,
    countdown: float | None = None,
    sent_at: datetime | None = None,
) -> None:
    """Send the wake-up message for `job_id`, stamped as sent at `sent_at` (default: now). Safe
    to repeat: workers claim jobs atomically."""
    app.send_task(
        TASK_NAME,
        args=[str(job_id)],
        queue=queue,
        priority=_kombu_priority(priority),
        countdown=countdown,
        ignore_result=True,
        headers={SENT_AT_HEADER: time.time() if sent_at is None else sent_at.timestamp()},
    )
