"""Submit-time checks: a job that can never succeed is rejected before any row is written.

URIs are parsed and validated by `ObjectURI.parse` (S3 bucket naming rules, key length and
characters, no '.' or '..' segments), confined by `UriPolicy` (outputs under the output prefixes,
inputs outside them), and their containers are asked about: an S3 bucket must exist, and a file
must lie under the object store's root folders (`LocalStore`). That no other job writes the
output is the job store's check, made with the insert.
"""

from __future__ import annotations

from toonq.shared.errors import InvalidURIError, UnknownBucketError
from toonq.shared.storage import ObjectStore, ObjectURI, UriPolicy


class InputValidator:
    """Checks URIs against the policy, and that their buckets exist (each bucket is asked about
    once)."""

    def __init__(self, objects: ObjectStore, policy: UriPolicy) -> None:
        self._objects = objects
        self._policy = policy
        self._known_buckets: set[str] = set()

    def check_input(self, uri: str) -> None:
        self._check(self._policy.check_input(uri), uri, role="input")

    def check_output(self, uri: str) -> str:
        """`uri` in its canonical form, as the job store compares outputs (a file URI spelt
        `file://localhost/...` or with `//` names the same file as its `file:///...` form)."""
        location = self._policy.check_output(uri)
        self._check(location, uri, role="output")
        return str(location)

    def _check(self, parsed: ObjectURI, uri: str, *, role: str) -> None:
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
