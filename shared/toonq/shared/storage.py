"""Object storage behind URIs: `s3://bucket/key` (S3 or any S3-compatible endpoint) and
`file:///absolute/path` (the embedded default).

Every failure surfaces as toonq's error taxonomy, so the worker can tell a missing input (fail the
job now) from S3 throttling (retry later) without knowing which store it talked to.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
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

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

S3Operation = Literal["get", "put", "head_bucket"]

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "Forbidden",
        "403",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccountProblem",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
    }
)
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


@dataclass(frozen=True)
class ObjectURI:
    """A parsed object location. For `file` URIs `bucket` is empty and `key` is the absolute
    path."""

    scheme: Literal["s3", "file"]
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> ObjectURI:
        if uri.startswith("s3://"):
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            if not bucket or not key:
                raise InvalidURIError(
                    f"{uri!r}: an S3 URI needs a bucket and a key (s3://bucket/key)"
                )
            return cls("s3", bucket, key)
        if uri.startswith("file://"):
            return cls("file", "", _file_path(uri))
        raise InvalidURIError(
            f"{uri!r}: unsupported URI; expected s3://bucket/key or file:///absolute/path"
        )

    @property
    def path(self) -> Path:
        """The local path of a `file` URI."""
        return Path(self.key)

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.key}"
        return self.path.as_uri()


def _file_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise InvalidURIError(f"{uri!r}: a file URI must be file:///absolute/path")
    # url2pathname undoes the percent-encoding of Path.as_uri() (spaces, "#", non-ASCII...).
    path = url2pathname(parts.path)
    if not path.startswith("/") or path.endswith("/"):
        raise InvalidURIError(f"{uri!r}: a file URI must name a file by its absolute path")
    return path


class ObjectStore(Protocol):
    def get(self, uri: str, *, max_bytes: int) -> bytes:
        """The object's bytes; ImageTooLargeError beyond `max_bytes`, checked before reading."""
        ...

    def put(self, uri: str, data: bytes, *, content_type: str) -> None: ...

    def exists_bucket(self, uri: str) -> bool:
        """Whether the container of `uri` exists, to reject a bad output location early."""
        ...


def _require(uri: str, scheme: Literal["s3", "file"]) -> ObjectURI:
    location = ObjectURI.parse(uri)
    if location.scheme != scheme:
        raise InvalidURIError(f"{uri!r}: expected a {scheme}:// URI")
    return location


# --- S3 -------------------------------------------------------------------------------------------


def translate_s3_error(exc: Exception, uri: ObjectURI, operation: S3Operation) -> ToonqError:
    """The taxonomy error for a boto3 failure of `operation` on `uri`."""
    writing = operation == "put"
    denied = OutputAccessDeniedError if writing else InputAccessDeniedError
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return denied(f"{uri}: no usable AWS credentials ({exc})")
    if not isinstance(exc, ClientError):
        # Timeouts, refused or dropped connections, truncated bodies...
        return StorageUnavailableError(f"{uri}: {operation} failed: {exc}")
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if code in _TRANSIENT_CODES or status == 429 or status >= 500:
        return StorageUnavailableError(f"{uri}: S3 is unavailable ({code or status})")
    if code in _DENIED_CODES or status == 403:
        return denied(f"{uri}: access denied ({code or status})")
    if code in _NOT_FOUND_CODES or status == 404:
        if writing:
            # A missing key cannot fail a write: only the bucket can be missing.
            return OutputAccessDeniedError(f"{uri}: bucket {uri.bucket!r} does not exist")
        if code == "NoSuchBucket":
            return InputNotFoundError(f"{uri}: bucket {uri.bucket!r} does not exist")
        return InputNotFoundError(f"{uri} does not exist")
    # Unknown to us: retrying a few times costs less than failing a job for good by mistake.
    return StorageUnavailableError(f"{uri}: {operation} failed: {code or status}: {exc}")


class S3Store:
    """S3 or an S3-compatible endpoint (MinIO, moto...). Credentials come from the standard
    AWS_* variables, shared config files or instance roles (boto3's default chain)."""

    def __init__(
        self,
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 4,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_pool_connections: int = 32,
    ) -> None:
        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # One client serves every worker thread: enough pooled connections for all of them.
            max_pool_connections=max_pool_connections,
            # Custom endpoints rarely resolve bucket.host names.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        # Clients are thread-safe, sessions are not: this client gets a session of its own.
        self._client: S3Client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=config
        )

    def get(self, uri: str, *, max_bytes: int) -> bytes:
        location = _require(uri, "s3")
        try:
            response = self._client.get_object(Bucket=location.bucket, Key=location.key)
            body = response["Body"]
            try:
                # The headers arrive before the body: refuse a huge object without reading it.
                if response["ContentLength"] > max_bytes:
                    raise ImageTooLargeError(
                        f"{uri}: {response['ContentLength']} bytes, over the {max_bytes} limit"
                    )
                return body.read()
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise translate_s3_error(exc, location, "get") from exc

    def put(self, uri: str, data: bytes, *, content_type: str) -> None:
        location = _require(uri, "s3")
        try:
            self._client.put_object(
                Bucket=location.bucket, Key=location.key, Body=data, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_s3_error(exc, location, "put") from exc

    def exists_bucket(self, uri: str) -> bool:
        """Whether the bucket exists; one we may not read still exists (jobs then fail with an
        access error that says so)."""
        location = _require(uri, "s3")
        try:
            self._client.head_bucket(Bucket=location.bucket)
        except (ClientError, BotoCoreError) as exc:
            error = translate_s3_error(exc, location, "head_bucket")
            if isinstance(error, InputNotFoundError):
                return False
            if isinstance(error, InputAccessDeniedError):
                return True
            raise error from exc
        return True


# --- Local files ----------------------------------------------------------------------------------


class LocalStore:
    """`file://` URIs on a local (or mounted) file system."""

    def get(self, uri: str, *, max_bytes: int) -> bytes:
        path = _require(uri, "file").path
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > max_bytes:
                    raise ImageTooLargeError(f"{uri}: {size} bytes, over the {max_bytes} limit")
                return file.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise InputNotFoundError(f"{uri} does not exist") from exc
        except PermissionError as exc:
            raise InputAccessDeniedError(f"{uri}: permission denied") from exc
        except OSError as exc:
            raise StorageUnavailableError(f"{uri}: read failed: {exc}") from exc

    def put(self, uri: str, data: bytes, *, content_type: str) -> None:
        """Write atomically: readers see the old file or the whole new one, never a part."""
        path = _require(uri, "file").path
        # A unique name beside the target (same file system, so os.replace is atomic), created
        # with open() so that it gets the usual umask permissions, unlike mkstemp's 0600.
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with temporary.open("xb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
        except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise OutputAccessDeniedError(f"{uri}: cannot write: {exc}") from exc
        except OSError as exc:
            raise StorageUnavailableError(f"{uri}: write failed: {exc}") from exc

    def exists_bucket(self, uri: str) -> bool:
        """Whether `put` could create the file's folder: nothing but folders above it."""
        folder = _require(uri, "file").path.parent
        while not folder.exists():
            folder = folder.parent
        return folder.is_dir()


# --- Routing --------------------------------------------------------------------------------------


class Storage:
    """The object store for any supported URI: routes each call by the URI's scheme."""

    def __init__(self, *, s3: ObjectStore, local: ObjectStore) -> None:
        self._stores: dict[str, ObjectStore] = {"s3": s3, "file": local}

    def _store(self, uri: str) -> ObjectStore:
        return self._stores[ObjectURI.parse(uri).scheme]

    def get(self, uri: str, *, max_bytes: int) -> bytes:
        return self._store(uri).get(uri, max_bytes=max_bytes)

    def put(self, uri: str, data: bytes, *, content_type: str) -> None:
        self._store(uri).put(uri, data, content_type=content_type)

    def exists_bucket(self, uri: str) -> bool:
        return self._store(uri).exists_bucket(uri)


def open_store(settings: Settings) -> Storage:
    return Storage(
        s3=S3Store(settings.s3_endpoint_url, max_attempts=settings.s3_max_attempts),
        local=LocalStore(),
    )
