"""Test helpers: small pictures and job specifications, images through the engine's steps, the
`toonq` command line, worker logs, a fault-injecting S3 proxy and a webhook receiver."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from toonq.shared.job import Claim, JobParams, JobSpec, StagedOutput
from toonq.worker.harness.worker import TOONQ_COMMAND, WorkerProcess
from toonq.worker.health import HealthServer

if TYPE_CHECKING:
    from toonq.shared.jobstore import JobStore
    from toonq.worker.engine.matting import MatteResult, MattingEngine


def png_bytes(size: tuple[int, int] = (200, 150), *, mode: str = "RGBA") -> bytes:
    """A small picture: a coloured disc on a transparent (or plain) background."""
    image = Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else (30, 90, 200))
    pixels = image.load()
    assert pixels is not None
    cx, cy, r = size[0] / 2, size[1] / 2, min(size) / 3
    for y in range(size[1]):
        for x in range(size[0]):
            if (x - cx) ** 2 + (y - cy) ** 2 < r * r:
                pixels[x, y] = (250, 120, 160, 255) if mode == "RGBA" else (250, 120, 160)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def matte_batch(
    engine: MattingEngine, sources: Sequence[bytes | Image.Image], params: JobParams
) -> list[MatteResult]:
    """Images (bytes, or decoded) through the engine's three steps, as one batch."""
    prepared = [engine.prepare(source, params) for source in sources]
    logits = engine.infer(prepared)
    return [engine.finish(item, logit) for item, logit in zip(prepared, logits, strict=True)]


def matte_one(engine: MattingEngine, source: bytes, params: JobParams) -> MatteResult:
    """One image's bytes through the engine's three steps."""
    (result,) = matte_batch(engine, [source], params)
    return result


def staged_output(claim: Claim, **overrides: Any) -> StagedOutput:
    """An output of `claim`'s attempt, staged beside the job's output (no object is written)."""
    fields: dict[str, Any] = {
        "uri": f"{claim.job.output_uri}.staged-{claim.attempt}",
        "attempt": claim.attempt,
        "model_name": "m",
        "model_revision": None,
        "image_width": 1,
        "image_height": 1,
        "timings": {},
    }
    return StagedOutput(**(fields | overrides))


def succeed(store: JobStore, claim: Claim, **overrides: Any) -> bool:
    """Commit an output of `claim`'s attempt, then record it published, as a worker does; False
    if the store refused either."""
    output = staged_output(claim, **overrides)
    return store.commit_output(claim, output) and store.mark_succeeded(claim, output)


def job_spec(name: str | None = None, *, max_attempts: int = 3) -> JobSpec:
    """A job row's specification with S3 URIs named after `name` (unique by default)."""
    name = name or uuid.uuid4().hex
    return JobSpec(
        input_uri=f"s3://in/{name}.png",
        output_uri=f"s3://out/{name}.png",
        params=JobParams(bg_color="#808080", format="png", resolution=64),
        max_attempts=max_attempts,
    )


def run_toonq(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOONQ_COMMAND, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_json(*args: str, env: dict[str, str]) -> Any:
    result = run_toonq(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


LogLine = dict[str, object]


def log_lines(worker: WorkerProcess) -> list[LogLine]:
    """The JSON lines of the worker's log (TOONQ_LOG_FORMAT=json), parsed."""
    lines = []
    for raw in worker.log_path.read_text(errors="replace").splitlines():
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            lines.append(parsed)
    return lines


def wait_for_log(
    worker: WorkerProcess, predicate: Callable[[LogLine], bool], *, timeout: float = 60
) -> None:
    """Wait until the worker has logged a line for which `predicate` holds."""
    worker.wait_until(
        lambda: any(predicate(line) for line in log_lines(worker)),
        waiting_for="a log line",
        timeout_s=timeout,
    )


class _ProxyServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a killed worker, a request that timed out) is no proxy error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class _Fault:
    """What the proxy does to the next `times` requests for `method` on a path ending with
    `path_suffix`, in this order: wait for `gate`, sleep `delay_s`, then drop the connection
    (`drop`), answer an S3 error (`error`: status and code) or forward the request."""

    method: str
    path_suffix: str
    times: int = 1
    gate: threading.Event | None = None
    delay_s: float = 0.0
    drop: bool = False
    error: tuple[int, str] | None = None

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and path.endswith(self.path_suffix)


class FaultyS3Proxy:
    """An HTTP proxy in front of the S3 server that forwards every request, except those it was
    told to break: answered with an S3 error, held for a while, held until the test opens a gate,
    or left hanging then dropped (a timeout). `slow_down` delays every request (a slow endpoint).

    It also remembers a digest of every object body it stored (`writes`), copies included (the
    copied body's), so that a test can tell one write from two writes of different content."""

    #: How long a gated request waits at most, so that a forgotten gate cannot hang a test run.
    GATE_TIMEOUT_S = 300.0

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.latency_s = 0.0
        self.lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._writes: dict[str, list[str]] = {}
        self.server = _ProxyServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _add(self, fault: _Fault) -> None:
        with self.lock:
            self._faults.append(fault)

    def fail_next_gets(self, path_suffix: str, failures: int) -> None:
        """Answer 503 SlowDown to the next `failures` GETs of the object."""
        self.fail_next(path_suffix, failures)

    def fail_next(
        self,
        path_suffix: str,
        failures: int,
        *,
        method: str = "GET",
        status: int = 503,
        code: str = "SlowDown",
    ) -> None:
        """Answer `status` with the S3 error `code` to the next `failures` matching requests."""
        self._add(_Fault(method, path_suffix, times=failures, error=(status, code)))

    def hold_next_get(self, path_suffix: str, seconds: float) -> None:
        """Hold the next GET of the object for `seconds`, then serve it."""
        self._add(_Fault("GET", path_suffix, delay_s=seconds))

    def gate_next_get(self, path_suffix: str) -> threading.Event:
        """Hold the next GET of the object until the returned event is set, then serve it."""
        gate = threading.Event()
        self._add(_Fault("GET", path_suffix, gate=gate))
        return gate

    def hang_next(
        self, path_suffix: str, seconds: float, *, method: str = "GET", times: int = 1
    ) -> None:
        """Leave the next `times` matching requests unanswered for `seconds`, then close their
        connections without a response: a client whose read timeout is shorter gives up first."""
        self._add(_Fault(method, path_suffix, times=times, delay_s=seconds, drop=True))

    def slow_down(self, seconds: float) -> None:
        """Delay every request by `seconds` before forwarding it (0 to stop)."""
        self.latency_s = seconds

    def writes(self, uri: str) -> list[str]:
        """The SHA-256 of every body stored at `uri` (s3://bucket/key) through the proxy, in
        order."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        with self.lock:
            return list(self._writes.get(f"/{bucket}/{key}", []))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def _record_write(self, path: str, body: bytes) -> None:
        with self.lock:
            self._writes.setdefault(path, []).append(hashlib.sha256(body).hexdigest())

    def _record_copy(self, source: str, path: str) -> None:
        """A server-side copy stores the source's last body stored through the proxy."""
        with self.lock:
            self._writes.setdefault(path, []).extend(self._writes.get(source, [])[-1:])

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            # HTTP/1.1 answers boto3's "Expect: 100-continue" at once; under HTTP/1.0 every
            # upload would first wait a second for it.
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path.split("?")[0]
                time.sleep(proxy.latency_s)
                fault = proxy._take_fault(self.command, path)
                if fault is not None:
                    if fault.gate is not None:
                        fault.gate.wait(proxy.GATE_TIMEOUT_S)
                    time.sleep(fault.delay_s)
                    if fault.drop:
                        self.close_connection = True
                        return
                    if fault.error is not None:
                        self._answer_error(*fault.error)
                        return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                if self.command == "PUT" and response.status == 200:
                    copied = self.headers.get("x-amz-copy-source")
                    if copied is not None:
                        proxy._record_copy(f"/{unquote(copied).lstrip('/')}", path)
                    elif body is not None:
                        proxy._record_write(path, body)
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            def _answer_error(self, status: int, code: str) -> None:
                payload = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            # http.server dispatches on these names.
            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815

        return Handler

    @contextmanager
    def running(self) -> Iterator[FaultyS3Proxy]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


# --- Prometheus scrapes -------------------------------------------------------------------------


class Scrape:
    """One GET /metrics, as samples keyed by name and labels."""

    def __init__(self, exposition: str) -> None:
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def bucket(self, name: str, le: float, **labels: str) -> float | None:
        return self.value(f"{name}_bucket", le=str(float(le)), **labels)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def get(server: HealthServer, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def scrape(server: HealthServer) -> Scrape:
    status, body = get(server, "/metrics")
    assert status == 200, body
    return Scrape(body)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that answers each POST with the next of `answers` (then
    204; a 302 points elsewhere) and keeps the headers and body it was sent."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.received.append((headers, body))
                status = receiver.answers.pop(0) if receiver.answers else 204
                self.send_response(status)
                if status == 302:
                    self.send_header("location", f"{receiver.url}/elsewhere")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/toonq"

    def __enter__(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
