"""Untrusted input and secrets: URI validation at submit time and in the stores, the local store's
root folders, size limits enforced without reading everything, credentials kept out of logs, and
a queue message that carries nothing but the job id."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import png_bytes
from toonq.producer import ToonqClient
from toonq.shared.errors import (
    ImageTooLargeError,
    InputNotFoundError,
    InvalidURIError,
    OutputConflictError,
    UnknownBucketError,
)
from toonq.shared.logging import REDACTED, configure_logging, get_logger
from toonq.shared.queue import queue_lists
from toonq.shared.settings import Settings
from toonq.shared.storage import ObjectURI, local_roots
from toonq.shared.storage.local import LocalStore
from toonq.shared.storage.s3 import S3Store
from toonq.shared.storage.uri import MAX_KEY_BYTES

# --- S3 bucket names and keys ---------------------------------------------------------------------

VALID_BUCKETS = [
    "abc",
    "a" * 63,
    "my-bucket.v2",
    "0123",
    "a--b",
    "my-ap-hrzrlukc5m36ft7okagglf3gmwluquse1b-s3alias",  # an access point alias
    "data--usw2-az1--x-s3",  # a directory bucket
]
INVALID_BUCKETS = {
    "ab": "too short",
    "a" * 64: "too long",
    "My-Bucket": "uppercase",
    "my_bucket": "underscore",
    "-bucket": "starts with a hyphen",
    "bucket-": "ends with a hyphen",
    ".bucket": "starts with a dot",
    "bucket.": "ends with a dot",
    "my..bucket": "adjacent dots",
    "192.168.5.4": "an IP address",
    "xn--bucket": "reserved prefix",
    "sthree-bucket": "reserved prefix",
    "amzn-s3-demo-bucket": "reserved prefix",
    "my bucket": "space",
    "bücket": "not ASCII",
}
VALID_KEYS = [
    "a",
    "x" * MAX_KEY_BYTES,
    "é" * (MAX_KEY_BYTES // 2),  # 1024 bytes of UTF-8
    "in/2026/11/cat #1 (final).png",
    "..png",
    "a/.hidden/...",
    "/leading-slash.png",
    "日本語/画像.png",
]
INVALID_KEYS = {
    "x" * (MAX_KEY_BYTES + 1): "over 1024 bytes",
    "é" * (MAX_KEY_BYTES // 2 + 1): "over 1024 bytes of UTF-8",
    "a\x00b.png": "NUL",
    "a\nb.png": "newline (forged log lines)",
    "a\rb.png": "carriage return",
    "a\x7fb.png": "DEL",
    "a\x85b.png": "C1 control",
    "../x.png": "parent segment",
    "in/../x.png": "parent segment",
    "in/./x.png": "current segment",
    "in/..": "parent segment",
    "a\udc80.png": "lone surrogate",
}


@pytest.mark.parametrize("bucket", VALID_BUCKETS)
def test_valid_bucket_names_are_accepted(bucket: str) -> None:
    assert ObjectURI.parse(f"s3://{bucket}/key.png").bucket == bucket


@pytest.mark.parametrize("bucket", list(INVALID_BUCKETS), ids=list(INVALID_BUCKETS.values()))
def test_invalid_bucket_names_are_refused(bucket: str) -> None:
    with pytest.raises(InvalidURIError, match="bucket") as raised:
        ObjectURI.parse(f"s3://{bucket}/key.png")
    assert raised.value.code == "invalid_uri"


@pytest.mark.parametrize("key", VALID_KEYS)
def test_valid_keys_are_accepted(key: str) -> None:
    uri = ObjectURI.parse(f"s3://bucket/{key}")
    assert uri.key == key
    assert str(uri) == f"s3://bucket/{key}"


@pytest.mark.parametrize("key", list(INVALID_KEYS), ids=list(INVALID_KEYS.values()))
def test_invalid_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidURIError):
        ObjectURI.parse(f"s3://bucket/{key}")


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(st.text(max_size=1100))
def test_any_text_parses_or_raises_invalid_uri(text: str) -> None:
    try:
        uri = ObjectURI.parse(f"s3://{text}")
    except InvalidURIError:
        return
    assert str(uri) == f"s3://{text}"
    assert 3 <= len(uri.bucket) <= 63
    assert 1 <= len(uri.key.encode()) <= MAX_KEY_BYTES
    assert not any(unicodedata.category(char) == "Cc" for char in text)  # control characters


@pytest.mark.usefixtures("aws_env")
def test_the_s3_store_refuses_invalid_uris_before_any_request(refused_endpoint: str) -> None:
    store = S3Store(refused_endpoint, max_attempts=1)
    for uri in ("s3://Bad_Bucket/a.png", "s3://bucket/../a.png", "s3://bucket/a\x00.png"):
        with pytest.raises(InvalidURIError):
            store.get(uri, max_bytes=100)
        with pytest.raises(InvalidURIError):
            store.put(uri, b"data", content_type="image/png")
        with pytest.raises(InvalidURIError):
            store.exists_bucket(uri)


# --- Local files stay under their roots -----------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    (path / "in").mkdir(parents=True)
    (path / "in" / "cat.png").write_bytes(b"inside")
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_bytes(b"outside")
    return path


def _refused_everywhere(store: LocalStore, uri: str) -> None:
    with pytest.raises(InvalidURIError):
        store.get(uri, max_bytes=1 << 20)
    with pytest.raises(InvalidURIError):
        store.put(uri, b"overwritten", content_type="image/png")
    with pytest.raises(InvalidURIError):
        store.exists_bucket(uri)


@pytest.mark.parametrize(
    "suffix",
    [
        "/in/../../outside/secret.txt",
        "/in/%2e%2e/%2E%2E/outside/secret.txt",
        "/in/..%2f..%2foutside/secret.txt",
        "/in/./cat.png",
        "/in/cat%00.png",
    ],
    ids=["dot-dot", "percent-encoded", "encoded-slash", "dot", "nul"],
)
def test_dot_segments_and_nul_are_refused(root: Path, outside: Path, suffix: str) -> None:
    _refused_everywhere(LocalStore([root]), root.as_uri() + suffix)
    assert (outside / "secret.txt").read_bytes() == b"outside"


def test_absolute_paths_outside_the_roots_are_refused(root: Path, outside: Path) -> None:
    store = LocalStore([root])
    _refused_everywhere(store, (outside / "secret.txt").as_uri())
    _refused_everywhere(store, (outside / "new.png").as_uri())
    # A sibling whose name merely starts with the root's.
    sibling = root.parent / f"{root.name}-evil" / "x.png"
    _refused_everywhere(store, sibling.as_uri())
    assert sorted(path.name for path in outside.iterdir()) == ["secret.txt"]
    assert not sibling.parent.exists()


def test_symbolic_links_out_of_the_root_are_refused(root: Path, outside: Path) -> None:
    (root / "in" / "link.png").symlink_to(outside / "secret.txt")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    store = LocalStore([root])

    _refused_everywhere(store, (root / "in" / "link.png").as_uri())
    _refused_everywhere(store, (root / "escape" / "secret.txt").as_uri())
    _refused_everywhere(store, (root / "escape" / "planted.png").as_uri())

    assert (outside / "secret.txt").read_bytes() == b"outside"
    assert not (outside / "planted.png").exists()


def test_links_within_the_roots_and_linked_roots_work(tmp_path: Path, root: Path) -> None:
    (root / "alias.png").symlink_to(root / "in" / "cat.png")
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(root, target_is_directory=True)
    store = LocalStore([linked_root])

    assert store.get((root / "alias.png").as_uri(), max_bytes=100) == b"inside"
    assert store.get((linked_root / "in" / "cat.png").as_uri(), max_bytes=100) == b"inside"
    store.put((linked_root / "out" / "new.png").as_uri(), b"new", content_type="image/png")
    assert (root / "out" / "new.png").read_bytes() == b"new"


def test_a_fifo_is_refused_without_waiting_for_a_writer(root: Path) -> None:
    fifo = root / "in" / "pipe.png"
    os.mkfifo(fifo)
    start = time.monotonic()

    with pytest.raises(InputNotFoundError, match="not a regular file"):
        LocalStore([root]).get(fifo.as_uri(), max_bytes=100)
    assert time.monotonic() - start < 5


def test_the_roots_are_toonq_home_and_the_file_prefixes(tmp_path: Path) -> None:
    home, outputs, uploads = tmp_path / "home", tmp_path / "outputs", tmp_path / "uploads"
    on_s3 = Settings.from_env({"TOONQ_HOME": str(home), "TOONQ_OUTPUT_PREFIX": "s3://media/out"})
    on_files = Settings.from_env(
        {
            "TOONQ_HOME": str(home),
            "TOONQ_OUTPUT_PREFIX": outputs.as_uri(),
            "TOONQ_ALLOWED_OUTPUT_PREFIXES": "s3://media/more",
            "TOONQ_ALLOWED_INPUT_PREFIXES": f"{uploads.as_uri()},s3://media/in",
        }
    )

    assert local_roots(on_s3) == [home]
    assert local_roots(on_files) == [home, outputs, uploads]


# --- Submit-time validation -----------------------------------------------------------------------


@pytest.fixture
def client(producer_settings: Settings) -> Iterator[ToonqClient]:
    with ToonqClient(producer_settings) as client:
        yield client


def _queued(redis_url: str, queue: str) -> list[bytes]:
    """The raw messages in the test queue's Redis lists (one per priority step)."""
    messages = []
    with redis.Redis.from_url(redis_url) as connection:
        for key in queue_lists(queue):
            for message in connection.lrange(key, 0, -1):
                assert isinstance(message, bytes)  # no decode_responses
                messages.append(message)
    return messages


@pytest.mark.parametrize(
    ("input_uri", "output_uri"),
    [
        ("s3://Bad_Bucket/in/a.png", None),
        ("s3://{bucket}/in/../a.png", None),
        ("s3://{bucket}/in/a\n.png", None),
        ("s3://{bucket}/" + "k" * (MAX_KEY_BYTES + 1), None),
        ("s3://{bucket}/in/a.png", "s3://192.168.0.1/out.png"),
        ("file:///etc/passwd", None),
        ("s3://{bucket}/in/a.png", "file:///tmp/../etc/cron.d/x"),
        ("s3://{bucket}/in/a.png", "s3://{bucket}/in/a.png"),
        ("s3://{bucket}/in/a.png", "s3://{bucket}/outside/a.png"),
        ("s3://{bucket}/out/other-job.png", None),
    ],
    ids=[
        "bucket",
        "dot-dot-key",
        "control-key",
        "long-key",
        "ip-bucket",
        "file-out",
        "file-up",
        "over-the-input",
        "outside-the-output-prefix",
        "input-from-the-outputs",
    ],
)
def test_submit_refuses_invalid_uris_before_writing_anything(
    client: ToonqClient, redis_url: str, s3_bucket: str, input_uri: str, output_uri: str | None
) -> None:
    with pytest.raises(InvalidURIError):
        client.submit(
            input_uri.format(bucket=s3_bucket),
            output_uri=None if output_uri is None else output_uri.format(bucket=s3_bucket),
        )
    assert client.list() == []
    assert _queued(redis_url, client.settings.queue) == []


@pytest.fixture
def file_client(producer_settings: Settings) -> Iterator[ToonqClient]:
    """A client whose outputs may also go to TOONQ_HOME/outputs (a file:// prefix)."""
    outputs = (producer_settings.home / "outputs").as_uri()
    with ToonqClient(replace(producer_settings, allowed_output_prefixes=(outputs,))) as client:
        yield client


def test_submit_refuses_file_uris_without_a_file_prefix(client: ToonqClient) -> None:
    source = client.settings.home / "inputs" / "cat.png"
    source.parent.mkdir(parents=True)
    source.write_bytes(png_bytes())

    with pytest.raises(InvalidURIError, match="file:// URIs are accepted only"):
        client.submit(source.as_uri())
    assert client.list() == []


def test_submit_accepts_files_under_toonq_home_with_a_file_prefix(
    file_client: ToonqClient,
) -> None:
    source = file_client.settings.home / "inputs" / "cat.png"
    source.parent.mkdir(parents=True)
    source.write_bytes(png_bytes())
    output = (file_client.settings.home / "outputs" / "cat.png").as_uri()

    job = file_client.submit(source.as_uri(), output_uri=output)

    assert (job.input_uri, job.output_uri) == (source.as_uri(), output)


def test_submit_refuses_a_file_output_under_a_file(file_client: ToonqClient) -> None:
    blocker = file_client.settings.home / "outputs" / "blocker"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    with pytest.raises(UnknownBucketError, match="cannot be created"):
        file_client.submit(
            f"s3://{file_client.settings.output_prefix.split('/')[2]}/in/a.png",
            output_uri=(blocker / "out.png").as_uri(),
        )


def test_submit_refuses_an_output_another_job_has(
    client: ToonqClient, redis_url: str, s3_bucket: str
) -> None:
    """Before its row or message is written; an idempotent resubmit is the same job."""
    output = f"s3://{s3_bucket}/out/sticker.png"
    first = client.submit(f"s3://{s3_bucket}/in/a.png", output_uri=output, idempotency_key="a")
    sent = _queued(redis_url, client.settings.queue)

    with pytest.raises(OutputConflictError, match=str(first.id)):
        client.submit(f"s3://{s3_bucket}/in/b.png", output_uri=output)
    again = client.submit(f"s3://{s3_bucket}/in/a.png", output_uri=output, idempotency_key="a")

    assert again.id == first.id
    assert [job.id for job in client.list()] == [first.id]
    assert _queued(redis_url, client.settings.queue) == sent


# --- The queue message carries the job id, nothing else -------------------------------------------


def test_the_message_holds_only_the_job_id(
    client: ToonqClient, redis_url: str, s3_bucket: str
) -> None:
    input_uri = f"s3://{s3_bucket}/private/user-4242/selfie.png"
    job = client.submit(input_uri, idempotency_key="user-4242-selfie", bg_color="#123456")

    (raw,) = _queued(redis_url, client.settings.queue)
    envelope = json.loads(raw)
    assert envelope["content-type"] == "application/json"  # never pickle
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert (args, kwargs) == ([str(job.id)], {})
    for private in (input_uri, s3_bucket, "user-4242", "123456", job.output_uri):
        assert private.encode() not in raw


# --- Byte limits, enforced without reading the whole object ---------------------------------------


class _HugeObjectHandler(BaseHTTPRequestHandler):
    """Answers every GET with an endless object: a 10 GB Content-Length, or chunked encoding
    with no length at all. Records how many body bytes it managed to send."""

    chunked = False
    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(10 * 1024**3))
        self.end_headers()
        block = b"\x89PNG" * 16384
        try:
            while type(self).sent < 1024**3:
                if self.chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    self.wfile.write(block)
                type(self).sent += len(block)
        except OSError:
            return  # the client hung up

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@dataclass
class HugeObjectServer:
    endpoint: str
    handler: type[_HugeObjectHandler]


@pytest.fixture(params=[False, True], ids=["content-length", "chunked"])
def huge_object_server(request: pytest.FixtureRequest) -> Iterator[HugeObjectServer]:
    handler = type("Handler", (_HugeObjectHandler,), {"chunked": request.param, "sent": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield HugeObjectServer(f"http://127.0.0.1:{server.server_address[1]}", handler)
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("aws_env")
def test_an_object_over_the_byte_limit_is_refused_without_reading_it(
    huge_object_server: HugeObjectServer,
) -> None:
    store = S3Store(huge_object_server.endpoint, max_attempts=1, read_timeout_s=30)
    start = time.monotonic()

    with pytest.raises(ImageTooLargeError, match="over the limit of 1048576 bytes") as raised:
        store.get("s3://bucket/huge.png", max_bytes=1 << 20)

    assert raised.value.code == "image_too_large"
    assert time.monotonic() - start < 10
    time.sleep(0.5)  # let the server notice the closed connection
    assert huge_object_server.handler.sent < 64 << 20


# --- No credentials in the logs -------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


SECRETS = ["hunter2", "s3cr3t-pw", "wJalrXUtnFEMI-K7MDENG", "tok-123456", "eyJhbGciOi"]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_credentials_never_reach_the_log_output(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(fmt=fmt, level="INFO")
    log = get_logger("toonq.tests.security")

    log.info(
        "connecting",
        database_url="postgresql+psycopg://toonq:hunter2@db:5432/toonq",
        broker="redis://:s3cr3t-pw@redis:6379/0",
        aws_secret_access_key="wJalrXUtnFEMI-K7MDENG",
        headers={"Authorization": "Bearer eyJhbGciOi", "Host": "s3.example.com"},
        settings={"password": "hunter2", "user": "toonq"},
        dsn="host=db user=toonq password=hunter2 dbname=toonq",
        attempts=3,
    )
    log.info("retrying with api_token=tok-123456 on amqp://guest:hunter2@mq//")
    logging.getLogger("botocore").warning("endpoint https://user:s3cr3t-pw@minio:9000/bucket")
    try:
        raise ConnectionError("cannot reach redis://default:s3cr3t-pw@cache:6379")
    except ConnectionError:
        log.exception("broker_down")

    output = capsys.readouterr().err
    for secret in SECRETS:
        assert secret not in output
    # The context that is not secret stays readable.
    for kept in ("toonq:***@db:5432/toonq", "redis://:***@redis", "s3.example.com", "user=toonq"):
        assert kept in output
    if fmt == "json":
        first = json.loads(output.splitlines()[0])
        assert first["aws_secret_access_key"] == REDACTED
        assert first["headers"] == {"Authorization": REDACTED, "Host": "s3.example.com"}
        assert first["attempts"] == 3
        assert "ConnectionError" in json.loads(output.splitlines()[-1])["exception"]
