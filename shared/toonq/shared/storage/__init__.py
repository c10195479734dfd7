"""Object storage behind URIs: `s3://bucket/key` (S3 or any S3-compatible endpoint) and
`file:///absolute/path` (the embedded default).

One module per job: `uri` (the URI policy: what toonq accepts), `s3` and `local` (the backends),
`store` (the `ObjectStore` protocol they follow). `Storage` routes each call to a backend by the
URI's scheme.

Every failure surfaces as toonq's error taxonomy, so the worker can tell a missing input (fail the
job now) from S3 throttling (retry later) without knowing which store it talked to.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from toonq.shared.errors import InvalidURIError
from toonq.shared.settings import Settings
from toonq.shared.storage.local import LocalStore
from toonq.shared.storage.s3 import S3Store
from toonq.shared.storage.store import ObjectStore
from toonq.shared.storage.uri import ObjectURI, Prefix, UriPolicy

__all__ = ["ObjectStore", "ObjectURI", "Storage", "UriPolicy", "local_roots", "open_store"]


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

    def copy(self, source_uri: str, target_uri: str) -> None:
        store = self._store(source_uri)
        if store is not self._store(target_uri):
            raise InvalidURIError(f"cannot copy {source_uri!r} to {target_uri!r}: another store")
        store.copy(source_uri, target_uri)

    def delete(self, uri: str) -> None:
        self._store(uri).delete(uri)

    def exists_bucket(self, uri: str) -> bool:
        return self._store(uri).exists_bucket(uri)

    def list_objects(self, prefix: str) -> Iterator[str]:
        return self._stores[Prefix.parse(prefix).scheme].list_objects(prefix)


def local_roots(settings: Settings) -> list[Path]:
    """The folders `file://` URIs may point into: TOONQ_HOME, and each `file://` prefix of the
    URI policy (TOONQ_OUTPUT_PREFIX and the allowed prefixes). Within them, `UriPolicy` says
    which a job may read or write."""
    prefixes = UriPolicy.from_settings(settings).file_prefixes
    return [settings.home, *(Path(prefix.key) for prefix in prefixes)]


def open_store(
    settings: Settings, *, concurrency: int | None = None, max_attempts: int | None = None
) -> Storage:
    """The object store for `settings`, pooling an S3 connection for each of the `concurrency`
    threads that use it at once (S3Store's default when None): a thread finding the pool full
    opens a connection of its own and closes it after one request. Each S3 call makes up to
    `max_attempts` requests (TOONQ_S3_MAX_ATTEMPTS when None)."""
    pool = {} if concurrency is None else {"max_pool_connections": concurrency}
    return Storage(
        s3=S3Store(
            settings.s3_endpoint_url,
            max_attempts=settings.s3_max_attempts if max_attempts is None else max_attempts,
            connect_timeout_s=settings.s3_connect_timeout_s,
            read_timeout_s=settings.s3_read_timeout_s,
            **pool,
        ),
        local=LocalStore(local_roots(settings)),
    )
