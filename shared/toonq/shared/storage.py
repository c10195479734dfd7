"""Object storage behind URIs: `s3://bucket/key` (S3 or any S3-compatible endpoint) and
`file:///absolute/path` (the embedded default).

Every failure surfaces as toonq's error taxonomy, so the worker can tell a missing input (fail the
job now) from S3 throttling (retry later) without knowing which store it talked to.

URIs are untrusted: `ObjectURI.parse` enforces S3's bucket naming rules and a safe subset of
object keys, and `LocalStore` only touches files under its root folders.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import uuid
from collections.abc import Iterable
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
    from botocore.response import StreamingBody
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

# S3's rules for bucket names: 3 to 63 lowercase letters, digits, dots and hyphens, starting and
# ending with a letter or digit. Names ending in -s3alias, --ol-s3 or --x-s3 (access point
# aliases, directory buckets) are accepted: GetObject and PutObject take them as bucket names.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
MAX_KEY_BYTES = 1024
# C0 and C1 control characters, DEL included: never part of a legitimate name, and a way to forge
# log lines or cut a path short (NUL).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class ObjectURI:
    """A parsed object location. For `file` URIs `bucket` is empty and `key` is the absolute
    path."""

    scheme: Literal["s3", "file"]
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> ObjectURI:
        """Parse and validate `uri`; InvalidURIError says what is wrong with it."""
        if _CONTROL_CHARACTERS.search(uri):
            raise InvalidURIError(f"{uri!r}: control characters are not allowed in URIs")
        if uri.startswith("s3://"):
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            if not bucket or not key:
                raise InvalidURIError(
                    f"{uri!r}: an S3 URI needs a bucket and a key (s3://bucket/key)"
                )
            _check_bucket_name(uri, bucket)
            _check_key(uri, key)
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


def _check_bucket_name(uri: str, bucket: str) -> None:
    problem = None
    if not _BUCKET_NAME.fullmatch(bucket):
        problem = (
            "must be 3 to 63 lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit"
        )
    elif ".." in bucket:
        problem = "must not hold two adjacent dots"
    elif _is_ipv4_address(bucket):
        problem = "must not be an IP address"
    elif bucket.startswith(_RESERVED_BUCKET_PREFIXES):
        problem = f"must not start with {', '.join(_RESERVED_BUCKET_PREFIXES)}"
    if problem:
        raise InvalidURIError(f"{uri!r}: invalid S3 bucket name {bucket!r}: it {problem}")


def _is_ipv4_address(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _check_key(uri: str, key: str) -> None:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, e.g. from undecodable file names
        raise InvalidURIError(f"{uri!r}: the S3 key is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidURIError(
            f"{uri[:80]!r}...: the S3 key is {size} bytes of UTF-8, over S3's {MAX_KEY_BYTES}"
        )
    if _has_dot_segments(key):
        # S3 stores them verbatim, but HTTP clients, proxies and file-system mirrors may
        # collapse them into another key.
        raise InvalidURIError(f"{uri!r}: '.' and '..' are not allowed as S3 key segments")


def _has_dot_segments(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


def _file_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise InvalidURIError(f"{uri!r}: a file URI must be file:///absolute/path")
    # url2pathname undoes the percent-encoding of Path.as_uri() (spaces, "#", non-ASCII...).
    path = url2pathname(parts.path)
    if not path.startswith("/") or path.endswith("/"):
        raise InvalidURIError(f"{uri!r}: a file URI must name a file by its absolute path")
    # Checked after the decoding, so that "%2e%2e" and "%00" count too.
    if _has_dot_segments(path):
        raise InvalidURIError(f"{uri!r}: '.' and '..' are not allowed in file URIs")
    if _CONTROL_CHARACTERS.search(path):
        raise InvalidURIError(f"{uri!r}: control characters are not allowed in file URIs")
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
                announced = response.get("ContentLength")
                if announced is not None and announced > max_bytes:
                    raise _too_large(uri, max_bytes, size=announced)
                return _read_at_most(body, max_bytes, uri)
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


_READ_CHUNK_BYTES = 1 << 20


def _read_at_most(body: StreamingBody, max_bytes: int, uri: str) -> bytes:
    """The whole body, or ImageTooLargeError as soon as it passes `max_bytes`, whatever the
    headers announced (an S3-compatible server may send no length, or a wrong one)."""
    chunks: list[bytes] = []
    size = 0
    # Ends with an empty read, on which botocore checks the announced length: a body cut short
    # is a transient StorageUnavailableError, not a truncated image.
    while chunk := body.read(min(_READ_CHUNK_BYTES, max_bytes + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(uri, max_bytes)
    return b"".join(chunks)


def _too_large(uri: str, max_bytes: int, *, size: int | None = None) -> ImageTooLargeError:
    what = "larger" if size is None else f"{size} bytes"
    return ImageTooLargeError(f"{uri}: {what}, over the limit of {max_bytes} bytes")


# --- Local files ----------------------------------------------------------------------------------


class LocalStore:
    """`file://` URIs on a local (or mounted) file system, confined to root folders.

    A path is resolved (symbolic links followed, as the kernel would) before anything is read or
    written, and refused with InvalidURIError unless it lies under one of the roots. Paths with
    '.' or '..' segments are refused when parsed. This guards against URIs that point elsewhere,
    not against a local user who swaps in a symbolic link between the check and the access.
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = tuple(Path(os.path.realpath(root)) for root in roots)
        if not self.roots:
            raise ValueError("a LocalStore needs at least one root folder")

    def _resolve(self, uri: str) -> Path:
        """The real path that `uri` names; InvalidURIError if it lies outside the roots."""
        resolved = Path(os.path.realpath(_require(uri, "file").path))
        if not any(resolved.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots)
            raise InvalidURIError(f"{uri!r} is outside the folders toonq may use ({allowed})")
        return resolved

    def get(self, uri: str, *, max_bytes: int) -> bytes:
        path = self._resolve(uri)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer. O_NOFOLLOW: the path was
            # resolved, so a link here was planted since.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            with open(fd, "rb") as file:
                status = os.fstat(file.fileno())
                if not stat.S_ISREG(status.st_mode):
                    raise InputNotFoundError(f"{uri} is not a regular file")
                if status.st_size > max_bytes:
                    raise _too_large(uri, max_bytes, size=status.st_size)
                # At most one byte more than allowed, in case the file grew since fstat.
                data = file.read(max_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise InputNotFoundError(f"{uri} does not exist") from exc
        except PermissionError as exc:
            raise InputAccessDeniedError(f"{uri}: permission denied") from exc
        except OSError as exc:
            raise StorageUnavailableError(f"{uri}: read failed: {exc}") from exc
        if len(data) > max_bytes:
            raise _too_large(uri, max_bytes)
        return data

    def put(self, uri: str, data: bytes, *, content_type: str) -> None:
        """Write atomically: readers see the old file or the whole new one, never a part."""
        path = self._resolve(uri)
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
        """Whether `put` could create the file's folder: nothing but folders above it.
        InvalidURIError if `uri` lies outside the roots."""
        folder = self._resolve(uri).parent
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


def local_roots(settings: Settings) -> list[Path]:
    """The folders `file://` URIs may point into: TOONQ_HOME, and the output folder when
    TOONQ_OUTPUT_PREFIX is a file URI."""
    roots = [settings.home]
    if settings.output_prefix.startswith("file://"):
        roots.append(ObjectURI.parse(settings.output_prefix).path)
    return roots


def open_store(settings: Settings) -> Storage:
    return Storage(
        s3=S3Store(
            settings.s3_endpoint_url,
            max_attempts=settings.s3_max_attempts,
            connect_timeout_s=settings.s3_connect_timeout_s,
            read_timeout_s=settings.s3_read_timeout_s,
        ),
        local=LocalStore(local_roots(settings)),
    )
