"""Prometheus metrics of a worker process.

Names and labels are a contract with the dashboard (docker/grafana/) and with alerting rules:
never rename one. The worker records into `WORKER_METRICS`, on prometheus-client's default
registry, through the module-level functions at the bottom (`record_job`, `observe_stages`...);
tests build a `WorkerMetrics` on a registry of their own. Values that live outside the worker's
code (GPU memory, queue depth) are read by collectors when Prometheus scrapes, so nothing polls in
between and a stopped scraper costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from toonq.shared.job import Outcome

if TYPE_CHECKING:
    import torch

#: The values of `toonq_jobs_total`'s `status` label: what handling a message did.
JOB_STATUSES = tuple(outcome.value for outcome in Outcome)
# Only these outcomes carry an error code: the others keep the label empty, which bounds the
# number of series.
ERROR_STATUSES = frozenset({Outcome.FAILED, Outcome.RETRYING})
STAGES = (
    "queue_wait",
    "download",
    "decode",
    "preprocess",
    "batch_wait",
    "inference",
    "postprocess",
    "encode",
    "upload",
    "total",
)
# From a few milliseconds (decode of a small image) to the job timeout (queue_wait, total).
STAGE_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# How each gauge of a job process (`toonq.worker.job_processes`) adds to the worker's: summed over
# the live ones, or, for the model process's own gauges, a zero that changes nothing.
_SUMMED_OVER_JOB_PROCESSES: Final = "livesum"
_MODEL_PROCESS_ONLY: Final = "max"
# A scrape must answer well within Prometheus' default 10 s scrape timeout, Redis down or not.
QUEUE_DEPTH_TIMEOUT_S = 0.5

GPU_MEMORY_ALLOCATED = "toonq_gpu_memory_allocated_bytes"
GPU_MEMORY_RESERVED = "toonq_gpu_memory_reserved_bytes"
QUEUE_DEPTH = "toonq_queue_depth"


class GpuMemoryCollector(Collector):
    """Memory that torch holds on one CUDA device: allocated to tensors, and reserved by its
    caching allocator (what other processes cannot use). Absent until CUDA is initialised, and on
    other devices."""

    def __init__(self, device: torch.device, errors: Counter) -> None:
        self._device = device
        self._errors = errors

    def describe(self) -> list[Metric]:
        return self._families()

    def collect(self) -> list[Metric]:
        import torch  # already imported by whoever built `self._device`

        # Before the engine initialised CUDA there is nothing to report (torch would say zero).
        cuda_in_use = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        if self._device.type != "cuda" or not cuda_in_use:
            return []
        try:
            allocated = torch.cuda.memory_allocated(self._device)
            reserved = torch.cuda.memory_reserved(self._device)
        except RuntimeError:
            self._errors.inc()
            return []
        return self._families(allocated, reserved)

    @staticmethod
    def _families(allocated: int | None = None, reserved: int | None = None) -> list[Metric]:
        return [
            GaugeMetricFamily(
                GPU_MEMORY_ALLOCATED, "Bytes of GPU memory allocated to tensors.", value=allocated
            ),
            GaugeMetricFamily(
                GPU_MEMORY_RESERVED,
                "Bytes of GPU memory held by torch's caching allocator.",
                value=reserved,
            ),
        ]


class QueueDepthCollector(Collector):
    """Messages waiting in Redis lists (a queue's base list and its priority lists), read with
    LLEN at scrape time. When Redis does not answer within the timeout the gauge is left out of
    that scrape, so the rest of the scrape still succeeds, and `errors` counts the miss."""

    def __init__(
        self,
        redis_url: str,
        list_names: Sequence[str],
        errors: Counter,
        *,
        timeout_s: float = QUEUE_DEPTH_TIMEOUT_S,
    ) -> None:
        self._list_names = list(list_names)
        self._errors = errors
        self._client = redis.Redis.from_url(
            redis_url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # Never retried within a scrape: the next scrape is the retry.
            retry=Retry(NoBackoff(), 0),
        )

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        try:
            with self._client.pipeline(transaction=False) as pipeline:
                for name in self._list_names:
                    pipeline.llen(name)
                depths = pipeline.execute()
        except redis.RedisError:
            self._errors.inc()
            return []
        family = self._family()
        for name, depth in zip(self._list_names, depths, strict=True):
            family.add_metric([printable_list_name(name)], int(depth))
        return [family]

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            QUEUE_DEPTH, "Messages waiting in each Redis list of the queue.", labels=["queue"]
        )


def printable_list_name(name: str) -> str:
    """The `queue` label of a Redis list: kombu's priority lists have control characters in their
    names ("matting\\x06\\x163"), shown escaped as redis-cli shows them."""
    return name.encode("unicode_escape").decode("ascii")


class WorkerMetrics:
    """Every metric of a worker, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self._jobs = Counter(
            "toonq_jobs_total",
            "Job messages handled, by outcome, and by error code for failed and retrying ones.",
            ["status", "error_code"],
            registry=registry,
        )
        # One series per tenant and outcome: tenants are few (customers, not end users).
        self._tenant_jobs = Counter(
            "toonq_tenant_jobs_total",
            "Claimed jobs handled, by tenant and outcome (jobs of no tenant are not counted).",
            ["tenant", "status"],
            registry=registry,
        )
        self._stage_seconds = Histogram(
            "toonq_job_stage_seconds",
            "Time a job spent in each stage, from waiting in the queue to the upload.",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=registry,
        )
        self._batch_size = Histogram(
            "toonq_batch_size",
            "Images per model batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self._oom_splits = Counter(
            "toonq_batch_oom_splits_total",
            "Batches split in two after running out of GPU memory.",
            registry=registry,
        )
        self._batch_failures = Counter(
            "toonq_batch_failures_total",
            "Batches the model failed (out-of-memory splits aside): every job of one fails.",
            registry=registry,
        )
        self._max_batch_size = Gauge(
            "toonq_max_batch_size",
            "Largest batch the worker forms now (lowered by out-of-memory splits).",
            registry=registry,
            multiprocess_mode=_MODEL_PROCESS_ONLY,
        )
        self._in_flight = Gauge(
            "toonq_jobs_in_flight",
            "Jobs this worker holds right now.",
            registry=registry,
            multiprocess_mode=_SUMMED_OVER_JOB_PROCESSES,
        )
        self._model_load_seconds = Gauge(
            "toonq_model_load_seconds",
            "Seconds the worker took to load and warm up its model.",
            registry=registry,
            multiprocess_mode=_MODEL_PROCESS_ONLY,
        )
        self._memory_budget = Gauge(
            "toonq_memory_budget_bytes",
            "Host memory the worker lets the images of its jobs take at once.",
            registry=registry,
            multiprocess_mode=_SUMMED_OVER_JOB_PROCESSES,
        )
        self._memory_reserved = Gauge(
            "toonq_memory_reserved_bytes",
            "Host memory reserved now by the jobs holding images.",
            registry=registry,
            multiprocess_mode=_SUMMED_OVER_JOB_PROCESSES,
        )
        self._compiled_shapes = Gauge(
            "toonq_compiled_shapes",
            "Distinct input shapes the compiled model has run (each one a compiled graph).",
            registry=registry,
            multiprocess_mode=_MODEL_PROCESS_ONLY,
        )
        self._scrape_errors = Counter(
            "toonq_metrics_scrape_errors_total",
            "Scrape-time reads that failed (their metrics were left out of that scrape).",
            ["collector"],
            registry=registry,
        )
        # Series that exist from the start, at zero, so that rate() and absent() see them.
        for status in JOB_STATUSES:
            if status not in ERROR_STATUSES:
                self._jobs.labels(status=status, error_code="")
        #: Looked up once: a job observes every stage.
        self._stages = {stage: self._stage_seconds.labels(stage=stage) for stage in STAGES}

    def record_job(self, outcome: Outcome, error_code: str = "") -> None:
        """Count one handled job message by its outcome; only failed and retrying jobs carry an
        `error_code` (a `ToonqError.code`)."""
        if outcome not in JOB_STATUSES:
            raise ValueError(f"unknown job status {outcome!r}, expected one of {JOB_STATUSES}")
        if error_code and outcome not in ERROR_STATUSES:
            raise ValueError(f"a {outcome} job has no error code, got {error_code!r}")
        self._jobs.labels(status=outcome.value, error_code=error_code).inc()

    def record_tenant_job(self, tenant: str, outcome: Outcome) -> None:
        """Count one claimed job of `tenant` by its outcome."""
        self._tenant_jobs.labels(tenant=tenant, status=outcome.value).inc()

    def observe_stages(self, timings_ms: Mapping[str, float]) -> None:
        """Record the duration of each stage of one job, in milliseconds, by stage name. Only the
        stages of `STAGES` are exported: other timings a job records stay in its database row."""
        for stage, histogram in self._stages.items():
            if stage in timings_ms:
                histogram.observe(timings_ms[stage] / 1000)

    def observe_batch(self, size: int) -> None:
        self._batch_size.observe(size)

    def record_oom_split(self, new_limit: int) -> None:
        """Count a batch split after an out-of-memory error, which lowered the limit to
        `new_limit` images."""
        self._oom_splits.inc()
        self._max_batch_size.set(new_limit)

    def record_batch_failure(self) -> None:
        self._batch_failures.inc()

    def set_max_batch_size(self, n: int) -> None:
        self._max_batch_size.set(n)

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a job as in flight for the duration of the block."""
        self._in_flight.inc()
        try:
            yield
        finally:
            self._in_flight.dec()

    def set_model_load_seconds(self, seconds: float) -> None:
        self._model_load_seconds.set(seconds)

    def set_memory_budget(self, nbytes: int) -> None:
        self._memory_budget.set(nbytes)

    def set_memory_reserved(self, nbytes: int) -> None:
        self._memory_reserved.set(nbytes)

    def watch_compiled_shapes(self, count: Callable[[], int]) -> None:
        """Report `count()` (the compiled model's distinct input shapes) at every scrape."""
        self._compiled_shapes.set_function(count)

    def watch_gpu_memory(self, device: torch.device) -> GpuMemoryCollector:
        """Report the GPU memory torch uses on `device` at every scrape."""
        collector = GpuMemoryCollector(device, self._scrape_errors.labels(collector="gpu_memory"))
        self.registry.register(collector)
        return collector

    def watch_queue_depth(
        self,
        redis_url: str,
        list_names: Sequence[str],
        *,
        timeout_s: float = QUEUE_DEPTH_TIMEOUT_S,
    ) -> QueueDepthCollector:
        """Report the length of each Redis list in `list_names` at every scrape."""
        collector = QueueDepthCollector(
            redis_url,
            list_names,
            self._scrape_errors.labels(collector="queue_depth"),
            timeout_s=timeout_s,
        )
        self.registry.register(collector)
        return collector


# The worker's metrics, on the default registry, and the functions it records them with (the same
# pattern as the `random` module's functions bound to one hidden instance).
WORKER_METRICS = WorkerMetrics()
record_job = WORKER_METRICS.record_job
record_tenant_job = WORKER_METRICS.record_tenant_job
observe_stages = WORKER_METRICS.observe_stages
observe_batch = WORKER_METRICS.observe_batch
record_oom_split = WORKER_METRICS.record_oom_split
record_batch_failure = WORKER_METRICS.record_batch_failure
set_max_batch_size = WORKER_METRICS.set_max_batch_size
in_flight = WORKER_METRICS.in_flight
set_model_load_seconds = WORKER_METRICS.set_model_load_seconds
set_memory_budget = WORKER_METRICS.set_memory_budget
set_memory_reserved = WORKER_METRICS.set_memory_reserved
watch_compiled_shapes = WORKER_METRICS.watch_compiled_shapes
watch_gpu_memory = WORKER_METRICS.watch_gpu_memory
watch_queue_depth = WORKER_METRICS.watch_queue_depth
