"""The URI policy: which object locations toonq accepts.

URIs are untrusted: `ObjectURI.parse` enforces S3's bucket naming rules and a safe subset of
object keys, and refuses file paths that could point somewhere other than they seem.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from toonq.shared.errors import InvalidURIError

Scheme = Literal["s3", "file"]

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

    scheme: Scheme
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


def parse_as(uri: str, scheme: Scheme) -> ObjectURI:
    """Parse `uri` as `ObjectURI.parse` does, and refuse it unless its scheme is `scheme`."""
    location = ObjectURI.parse(uri)
    if location.scheme != scheme:
        raise InvalidURIError(f"{uri!r}: expected a {scheme}:// URI")
    return location


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
