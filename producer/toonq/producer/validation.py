"""Submit-time checks: a job that can never succeed is rejected before any row is written.

URIs are parsed and validated by `ObjectURI.parse` (S3 bucket naming rules, key length and
characters, no '.' or '..' segments), and their containers are asked about: an S3 bucket must
exist, and a file must lie under the object store's root folders (`LocalStore`).
"""

from __future__ import annotations

from toonq.shared.errors import InvalidURIError, UnknownBucketError
from toonq.shared.storage import ObjectStore, ObjectURI


class InputValidator:
    """Checks URIs, and that their buckets exist (each bucket is asked about once)."""

    def __init__(self, objects: ObjectStore) -> None:
        self._objects = objects
        self._known_buckets: set[str] = set()

    def check_input(self, uri: str) -> None:
        self._check(uri, role="input")

    def check_output(self, uri: str) -> None:
        self._check(uri, role="output")

    def _check(self, uri: str, *, role: str) -> None:
        parsed = ObjectURI.parse(uri)
        if parsed.scheme == "file":
            # The local store refuses paths outside its roots with InvalidURIError.
            if not self._objects.exists_bucket(uri):
                raise UnknownBucketError(f"{role} URI {uri!r}: its folder cannot be created")
            return
        if parsed.key.endswith("/"):
            raise InvalidURIError(f"{role} URI {uri!r} names a folder, not an object")
        if parsed.bucket in self._known_buckets:
            return
        if not self._objects.exists_bucket(uri):
            raise UnknownBucketError(f"{role} bucket {parsed.bucket!r} does not exist ({uri})")
        self._known_buckets.add(parsed.bucket)
