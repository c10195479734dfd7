"""What every object store offers, whatever it talks to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from toonq.shared.errors import ImageTooLargeError


class ObjectStore(Protocol):
    def get(self, uri: str, *, max_bytes: int) -> bytes:
        """The object's bytes; ImageTooLargeError beyond `max_bytes`, checked before reading."""
        ...

    def put(self, uri: str, data: bytes, *, content_type: str) -> None: ...

    def copy(self, source_uri: str, target_uri: str) -> None:
        """Replace the object at `target_uri` with the one at `source_uri`, content type
        included, within the store (no bytes through the caller); InputNotFoundError if there is
        no source. Readers of the target see the old object or the whole new one."""
        ...

    def delete(self, uri: str) -> None:
        """Remove the object; nothing happens if there is none."""
        ...

    def exists_bucket(self, uri: str) -> bool:
        """Whether the container of `uri` exists, to reject a bad output location early."""
        ...

    def list_objects(self, prefix: str) -> Iterator[str]:
        """The URIs of the objects under the folder `prefix`, in key order: `s3://bucket`, or
        `s3://bucket/key` and `file:///folder` with or without a trailing slash, which mean the
        same (the keys under `key/`, never `key-old/...`). A prefix holding nothing (a
        missing folder included) yields nothing; a missing bucket is InputNotFoundError."""
        ...


def too_large_error(uri: str, max_bytes: int, *, size: int | None = None) -> ImageTooLargeError:
    """The error for an object over `max_bytes`: of `size` bytes where the store knows it."""
    what = "larger" if size is None else f"{size} bytes"
    return ImageTooLargeError(f"{uri}: {what}, over the limit of {max_bytes} bytes")
