"""The S3 backend: against a real HTTP server (moto), over failing connections, and the mapping
of boto3's errors to toonq's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from toonq.shared.errors import (
    ImageTooLargeError,
    InputAccessDeniedError,
    InputNotFoundError,
    InvalidURIError,
    OutputAccessDeniedError,
    StorageUnavailableError,
    ToonqError,
)
from toonq.shared.settings import Settings
from toonq.shared.storage import ObjectURI, open_store
from toonq.shared.storage.s3 import S3Operation, S3Store, translate_s3_error

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from tests.servers import SilentServer

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# --- S3 against moto ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_store(s3_server: str) -> S3Store:
    return S3Store(s3_server)


def test_s3_put_get_round_trip(s3_store: S3Store, s3_bucket: str, s3_client: S3Client) -> None:
    uri = f"s3://{s3_bucket}/outputs/cat.png"

    s3_store.put(uri, PNG, content_type="image/png")

    assert s3_store.get(uri, max_bytes=len(PNG)) == PNG
    assert s3_client.head_object(Bucket=s3_bucket, Key="outputs/cat.png")["ContentType"] == (
        "image/png"
    )


def test_s3_missing_key(s3_store: S3Store, s3_bucket: str) -> None:
    with pytest.raises(InputNotFoundError, match="does not exist") as raised:
        s3_store.get(f"s3://{s3_bucket}/missing.png", max_bytes=100)
    assert raised.value.code == "input_not_found"


def test_s3_missing_bucket(s3_store: S3Store) -> None:
    with pytest.raises(InputNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        s3_store.get("s3://no-such-bucket/cat.png", max_bytes=100)
    with pytest.raises(OutputAccessDeniedError, match="does not exist"):
        s3_store.put("s3://no-such-bucket/cat.png", PNG, content_type="image/png")


def test_s3_object_over_the_limit(s3_store: S3Store, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/big.png"
    s3_store.put(uri, PNG, content_type="image/png")

    with pytest.raises(ImageTooLargeError, match=f"{len(PNG)} bytes") as raised:
        s3_store.get(uri, max_bytes=len(PNG) - 1)
    assert raised.value.code == "image_too_large"


def test_s3_exists_bucket(s3_store: S3Store, s3_bucket: str) -> None:
    assert s3_store.exists_bucket(f"s3://{s3_bucket}/any")
    assert not s3_store.exists_bucket("s3://no-such-bucket/any")


def test_s3_list_objects_reads_every_page(
    s3_store: S3Store, s3_bucket: str, s3_client: S3Client
) -> None:
    keys = [f"in/{index:04}.png" for index in range(1001)]  # S3 answers 1000 keys a page
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3_client.put_object(Bucket=s3_bucket, Key=key), keys))

    assert list(s3_store.list_objects(f"s3://{s3_bucket}/in/")) == [
        f"s3://{s3_bucket}/{key}" for key in keys
    ]
    assert list(s3_store.list_objects(f"s3://{s3_bucket}"))[-1] == f"s3://{s3_bucket}/in/1000.png"


def test_s3_store_refuses_other_schemes(s3_store: S3Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidURIError, match="s3://"):
        s3_store.get((tmp_path / "cat.png").as_uri(), max_bytes=100)
    with pytest.raises(InvalidURIError, match="s3://"):
        list(s3_store.list_objects(tmp_path.as_uri()))


# --- S3 failures over real connections ------------------------------------------------------------


class _SlowDownHandler(BaseHTTPRequestHandler):
    """Answers every request as a throttling S3 would."""

    requests = 0
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def _answer(self) -> None:
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_PUT = do_HEAD = _answer  # noqa: N815 (the names http.server looks up)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def throttling_endpoint() -> Iterator[str]:
    _SlowDownHandler.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowDownHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _GatheringHandler(BaseHTTPRequestHandler):
    """Answers each GET once `gather` requests are waiting at once (every thread then holds a
    connection), and counts the connections it was opened on."""

    protocol_version = "HTTP/1.1"  # keep-alive: a pooled connection serves many requests
    gather: threading.Barrier
    connections = 0

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1

    def do_GET(self) -> None:
        self.gather.wait(timeout=10)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.mark.usefixtures("aws_env")
def test_the_store_keeps_a_connection_for_each_thread_using_it() -> None:
    threads = 34  # more than S3Store's default pool
    _GatheringHandler.gather = threading.Barrier(threads)
    _GatheringHandler.connections = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GatheringHandler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    settings = Settings.from_env(
        {"TOONQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}"}
    )
    store = open_store(settings, concurrency=threads)

    for _ in range(2):  # the second round reuses the first one's connections
        with ThreadPoolExecutor(threads) as pool:
            bodies = list(
                pool.map(lambda _: store.get("s3://bucket/key", max_bytes=1 << 20), range(threads))
            )
        assert bodies == [PNG] * threads
    server.shutdown()
    server.server_close()
    assert _GatheringHandler.connections == threads


@pytest.mark.usefixtures("aws_env")
def test_s3_connection_refused_is_transient(refused_endpoint: str) -> None:
    store = S3Store(refused_endpoint, max_attempts=1)

    with pytest.raises(StorageUnavailableError) as raised:
        store.get("s3://bucket/cat.png", max_bytes=100)
    assert raised.value.code == "storage_unavailable"
    with pytest.raises(StorageUnavailableError):
        store.put("s3://bucket/cat.png", PNG, content_type="image/png")
    with pytest.raises(StorageUnavailableError):
        store.exists_bucket("s3://bucket/cat.png")


@pytest.mark.usefixtures("aws_env")
def test_s3_read_timeout_is_transient(silent_server: SilentServer) -> None:
    store = S3Store(f"http://{silent_server.address}", max_attempts=1, read_timeout_s=0.2)

    with pytest.raises(StorageUnavailableError, match="timeout"):
        store.get("s3://bucket/cat.png", max_bytes=100)


@pytest.mark.usefixtures("aws_env")
def test_s3_throttling_is_retried_then_transient(throttling_endpoint: str) -> None:
    store = S3Store(throttling_endpoint, max_attempts=2)

    with pytest.raises(StorageUnavailableError, match="SlowDown"):
        store.put("s3://bucket/cat.png", PNG, content_type="image/png")
    assert _SlowDownHandler.requests == 2


# --- The error mapping ----------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    # Only the fields that the mapping reads, not a whole botocore response.
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


URI = ObjectURI.parse("s3://bucket/key.png")


@pytest.mark.parametrize(
    ("error", "operation", "expected"),
    [
        (client_error("NoSuchKey", 404), "get", InputNotFoundError),
        (client_error("404", 404), "get", InputNotFoundError),
        (client_error("NoSuchBucket", 404), "get", InputNotFoundError),
        (client_error("NoSuchBucket", 404), "put", OutputAccessDeniedError),
        (client_error("AccessDenied", 403), "get", InputAccessDeniedError),
        (client_error("403", 403), "head_bucket", InputAccessDeniedError),
        (client_error("AccessDenied", 403), "put", OutputAccessDeniedError),
        (client_error("InvalidAccessKeyId", 403), "put", OutputAccessDeniedError),
        (client_error("SlowDown", 503), "get", StorageUnavailableError),
        (client_error("Throttling", 400), "put", StorageUnavailableError),
        (client_error("RequestTimeout", 400), "get", StorageUnavailableError),
        (client_error("InternalError", 500), "put", StorageUnavailableError),
        (client_error("", 502), "get", StorageUnavailableError),
        (client_error("TooManyRequests", 429), "get", StorageUnavailableError),
        (client_error("SomethingNew", 400), "get", StorageUnavailableError),
        (EndpointConnectionError(endpoint_url="http://s3"), "get", StorageUnavailableError),
        (ConnectionClosedError(endpoint_url="http://s3"), "put", StorageUnavailableError),
        (ReadTimeoutError(endpoint_url="http://s3"), "get", StorageUnavailableError),
        (NoCredentialsError(), "get", InputAccessDeniedError),
        (NoCredentialsError(), "put", OutputAccessDeniedError),
    ],
)
def test_translate_s3_error(
    error: Exception, operation: S3Operation, expected: type[ToonqError]
) -> None:
    translated = translate_s3_error(error, URI, operation)
    assert type(translated) is expected
    assert str(URI) in translated.message
