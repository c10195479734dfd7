"""Test helpers that run real parts: `toonq` worker processes and a fault-injecting S3 proxy."""

from __future__ import annotations

import http.client
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

TOONQ = [sys.executable, "-m", "toonq.cli.main"]


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


def run_toonq(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOONQ, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_json(*args: str, env: dict[str, str]) -> Any:
    result = run_toonq(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class WorkerProcess:
    """A real `toonq worker` subprocess, logging JSON lines to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.env = env
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [*TOONQ, "worker", *args], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 120) -> None:
        self.wait_for_log(lambda line: line.get("event") == "worker_ready", timeout=timeout)

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                lines.append(parsed)
        return lines

    def wait_for_log(
        self, predicate: Callable[[dict[str, object]], bool], *, timeout: float = 60
    ) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if predicate(line):
                    return line
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"log line not seen within {timeout} s:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class FaultyS3Proxy:
    """An HTTP proxy in front of the S3 server that forwards every request, except that it can
    answer 503 SlowDown to, or hold for a while, the next GETs of a given object."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.failures_left: dict[str, int] = {}
        self.delays_left: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail_next_gets(self, path_suffix: str, failures: int) -> None:
        with self.lock:
            self.failures_left[path_suffix] = failures

    def hold_next_get(self, path_suffix: str, seconds: float) -> None:
        with self.lock:
            self.delays_left.setdefault(path_suffix, []).append(seconds)

    def _should_fail(self, method: str, path: str) -> bool:
        with self.lock:
            for suffix, left in self.failures_left.items():
                if method == "GET" and path.split("?")[0].endswith(suffix) and left > 0:
                    self.failures_left[suffix] = left - 1
                    return True
        return False

    def _delay(self, method: str, path: str) -> float:
        with self.lock:
            for suffix, delays in self.delays_left.items():
                if method == "GET" and path.split("?")[0].endswith(suffix) and delays:
                    return delays.pop(0)
        return 0.0

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                time.sleep(proxy._delay(self.command, self.path))
                if proxy._should_fail(self.command, self.path):
                    payload = b"<Error><Code>SlowDown</Code><Message>Slow down</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=30
                )
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

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


def base_env(**overrides: str) -> dict[str, str]:
    """The test process's environment (AWS test credentials included) plus `overrides`."""
    env = dict(os.environ)
    env.update(overrides)
    return env
