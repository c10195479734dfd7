"""Liveness and readiness of a worker, and the HTTP endpoint that serves them with the metrics.

* GET /readyz: 200 once the model is warm and the worker consumes, 503 before and from the moment
  a shutdown starts (Kubernetes stops routing to the pod, KEDA and dashboards count it out).
* GET /livez: 200 while the GPU loop beat within the liveness timeout, 503 otherwise (a wedged
  CUDA call or a dead loop: Kubernetes restarts the pod), and 503 for good once the device
  failed (`mark_failed`: batch after batch failed, the worker stopped taking jobs).
* GET /metrics: the Prometheus text format, from prometheus-client's WSGI app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DEFAULT_LIVENESS_TIMEOUT_S = 120.0


class Health(Collector):
    """What the probes answer, and the `toonq_worker_ready`, `toonq_worker_device_failed` and
    `toonq_worker_heartbeat_timestamp_seconds` gauges that report the same state.

    The liveness clock starts when the object is made, so a worker is alive while it loads its
    model (which may download weights) for up to one timeout before its GPU loop beats.
    """

    def __init__(
        self,
        liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S,
        *,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self._ready = False
        #: Why the device is taken to be broken, once it is.
        self._failure: str | None = None
        self._beat_monotonic = time.monotonic()
        self._beat_unix = time.time()
        registry.register(self)

    def mark_ready(self) -> None:
        # A failed device stays failed (a job process's late report of readiness included).
        self._ready = self._failure is None

    def mark_not_ready(self) -> None:
        self._ready = False

    def mark_failed(self, reason: str) -> None:
        """Not ready and not live for the rest of the process's life: its device is broken."""
        self._failure = reason
        self._ready = False

    def beat(self) -> None:
        """Called by the GPU loop on every iteration, idle ones included."""
        # Monotonic for the timeout (immune to clock steps), wall clock for the gauge.
        self._beat_monotonic = time.monotonic()
        self._beat_unix = time.time()

    def is_ready(self) -> bool:
        return self._ready

    def seconds_since_beat(self) -> float:
        return time.monotonic() - self._beat_monotonic

    def is_live(self) -> bool:
        return self._failure is None and self.seconds_since_beat() <= self.liveness_timeout_s

    def failure(self) -> str | None:
        """Why the device was taken to be broken (`mark_failed`), or None."""
        return self._failure

    def describe(self) -> list[Metric]:
        return self._families()

    def collect(self) -> list[Metric]:
        return self._families(
            ready=1.0 if self._ready else 0.0,
            failed=0.0 if self._failure is None else 1.0,
            beat_unix=self._beat_unix,
        )

    @staticmethod
    def _families(
        ready: float | None = None, failed: float | None = None, beat_unix: float | None = None
    ) -> list[Metric]:
        return [
            GaugeMetricFamily(
                "toonq_worker_ready",
                "1 while the worker has its model warm and consumes, 0 otherwise.",
                value=ready,
            ),
            GaugeMetricFamily(
                "toonq_worker_device_failed",
                "1 once the worker stopped taking jobs because batch after batch failed.",
                value=failed,
            ),
            GaugeMetricFamily(
                "toonq_worker_heartbeat_timestamp_seconds",
                "Unix time of the GPU loop's last iteration.",
                value=beat_unix,
            ),
        ]


class _QuietHandler(WSGIRequestHandler):
    # Probes hit the server every few seconds: one log line each would drown the worker's logs.
    def log_message(self, format: str, *args: object) -> None:
        pass


class HealthServer:
    """The running HTTP server of `serve`, on a daemon thread; `close()` stops it."""

    def __init__(self, server: ThreadingWSGIServer) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            # How often it checks for `close()`: a stopping worker should not wait on it.
            kwargs={"poll_interval": 0.1},
            name="toonq-health-server",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on (the chosen one when `serve` was asked for port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def health_app(health: Health, registry: CollectorRegistry = REGISTRY) -> WSGIApplication:
    """The WSGI application behind `serve`: /livez, /readyz and /metrics."""
    metrics_app: WSGIApplication = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/readyz":
            ready = health.is_ready()
            return _text(start_response, ready, "ready\n" if ready else "not ready\n")
        if path == "/livez":
            return _text(start_response, health.is_live(), _liveness(health))
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics, /livez or /readyz\n"]

    return app


def _liveness(health: Health) -> str:
    if (failure := health.failure()) is not None:
        return f"device failed: {failure}\n"
    if health.is_live():
        return "alive\n"
    return f"no beat for {health.seconds_since_beat():.0f} s\n"


def _text(start_response: StartResponse, ok: bool, body: str) -> list[bytes]:
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    )
    return [body.encode()]


def serve(
    port: int,
    health: Health,
    *,
    registry: CollectorRegistry = REGISTRY,
    host: str = "0.0.0.0",
) -> HealthServer:
    """Serve /metrics, /livez and /readyz on `host:port` from a daemon thread. Port 0 binds a
    free port (see `HealthServer.port`); whether to serve at all is the caller's decision."""
    server = make_server(
        host,
        port,
        health_app(health, registry),
        server_class=ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    return HealthServer(server)
