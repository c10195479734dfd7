"""S3 or any S3-compatible endpoint, with boto3; its failures become toonq's error taxonomy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

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
    InputAccessDeniedError,
    InputNotFoundError,
    InvalidURIError,
    OutputAccessDeniedError,
    StorageUnavailableError,
    ToonqError,
)
from toonq.shared.storage.store import too_large_error
from toonq.shared.storage.uri import ObjectURI, Prefix, parse_as

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

S3Operation = Literal["get", "put", "copy", "delete", "head_bucket", "list"]
#: The operations that write the object they are given, whose refusals are the output's.
_WRITES = frozenset({"put", "copy", "delete"})

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
_READ_CHUNK_BYTES = 1 << 20


def translate_s3_error(exc: Exception, uri: ObjectURI, operation: S3Operation) -> ToonqError:
    """The taxonomy error for a boto3 failure of `operation` on `uri`."""
    writing = operation in _WRITES
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
        location = parse_as(uri, "s3")
        try:
            response = self._client.get_object(Bucket=location.bucket, Key=location.key)
            body = response["Body"]
            try:
                # The headers arrive before the body: refuse a huge object without reading it.
                announced = response.get("ContentLength")
                if announced is not None and announced > max_bytes:
                    raise too_large_error(uri, max_bytes, size=announced)
                return _read_at_most(body, max_bytes, uri)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise translate_s3_error(exc, location, "get") from exc

    def put(self, uri: str, data: bytes, *, content_type: str) -> None:
        location = parse_as(uri, "s3")
        try:
            self._client.put_object(
                Bucket=location.bucket, Key=location.key, Body=data, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_s3_error(exc, location, "put") from exc

    def copy(self, source_uri: str, target_uri: str) -> None:
        """One server-side CopyObject (objects up to 5 GB), which keeps the content type."""
        source, target = parse_as(source_uri, "s3"), parse_as(target_uri, "s3")
        try:
            self._client.copy_object(
                Bucket=target.bucket,
                Key=target.key,
                CopySource={"Bucket": source.bucket, "Key": source.key},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                raise InputNotFoundError(f"{source_uri} does not exist") from exc
            raise translate_s3_error(exc, target, "copy") from exc
        except BotoCoreError as exc:
            raise translate_s3_error(exc, target, "copy") from exc

    def delete(self, uri: str) -> None:
        location = parse_as(uri, "s3")
        try:
            self._client.delete_object(Bucket=location.bucket, Key=location.key)
        except (ClientError, BotoCoreError) as exc:
            raise translate_s3_error(exc, location, "delete") from exc

    def exists_bucket(self, uri: str) -> bool:
        """Whether the bucket exists; one we may not read still exists (jobs then fail with an
        access error that says so)."""
        location = parse_as(uri, "s3")
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

    def list_objects(self, prefix: str) -> Iterator[str]:
        folder = Prefix.parse(prefix)
        if folder.scheme != "s3":
            raise InvalidURIError(f"{prefix!r}: expected an s3:// URI")
        # For the error messages: the folder as a location (the bucket alone when key is "").
        location = ObjectURI("s3", folder.bucket, folder.key)
        key_prefix = f"{folder.key}/" if folder.key else ""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=folder.bucket, Prefix=key_prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield f"s3://{folder.bucket}/{item['Key']}"
        except (ClientError, BotoCoreError) as exc:
            raise translate_s3_error(exc, location, "list") from exc


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
            raise too_large_error(uri, max_bytes)
    return b"".join(chunks)
