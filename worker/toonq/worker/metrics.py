"""Prometheus metrics of a worker process, served on `TOONQ_METRICS_PORT` when it is set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Counter("toonq_jobs_total", "Job messages handled, by outcome.", ["outcome"])
STAGE_SECONDS = Histogram(
    "toonq_job_stage_seconds",
    "Time spent per job stage (download, decode, preprocess, inference, postprocess, encode, "
    "upload).",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
READY = Gauge("toonq_worker_ready", "1 once the model is loaded and warmed up.")


def serve(port: int) -> None:
    if port:
        start_http_server(port)


def observe_stages(timings_ms: dict[str, float]) -> None:
    for stage, ms in timings_ms.items():
        STAGE_SECONDS.labels(stage=stage).observe(ms / 1000)
