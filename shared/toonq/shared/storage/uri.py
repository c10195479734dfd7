"""The URI policy: which object locations toonq accepts, and where a job may read and write.

URIs are untrusted: `ObjectURI.parse` enforces S3's bucket naming rules and a safe subset of
object keys, and refuses file paths that could point somewhere other than they seem.
`UriPolicy` confines jobs: outputs under the output prefixes, inputs outside them (and under the
allowed input prefixes, when set), nothing in the locations toonq keeps for itself.
`staged_output_uri` says where an attempt uploads its output before the job publishes it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from sqlalchemy.engine import make_url

from toonq.shared.errors import ConfigurationError, InvalidURIError
from toonq.shared.settings import Settings
from toonq.shared.storage.paths import lies_under, real_path

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
#: The folder, beside each output, where attempts stage theirs: no job may name it as output.
STAGING_FOLDER = ".toonq-staging"


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


def staged_output_uri(output_uri: str, job_id: uuid.UUID, attempt: int) -> str:
    """Where an attempt of a job uploads its output before the job publishes it: in the
    staging folder beside the output (same bucket, so a copy stays within S3), under a name
    no other attempt shares: `<folder>/.toonq-staging/<job id>-<attempt>-<random>.<ext>`."""
    location = ObjectURI.parse(output_uri)
    folder, _, name = location.key.rpartition("/")
    staged = f"{job_id}-{attempt}-{secrets.token_hex(4)}{PurePosixPath(name).suffix}"
    key = "/".join(part for part in (folder, STAGING_FOLDER, staged) if part)
    if location.scheme == "file" and not folder:
        key = f"/{key}"  # a file at the root
    return str(ObjectURI(location.scheme, location.bucket, key))


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


@dataclass(frozen=True)
class Prefix:
    """A location and everything under it: `s3://bucket` (the whole bucket), `s3://bucket/key`
    (the object `key` and the keys under `key/`), or `file:///folder` (the file or folder and
    what lies under it, symbolic links followed)."""

    scheme: Scheme
    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str) -> Prefix:
        """Parse `text`; a trailing slash changes nothing. InvalidURIError if it is no location."""
        trimmed = text.rstrip("/")
        if trimmed.startswith("s3://") and "/" not in trimmed.removeprefix("s3://"):
            bucket = trimmed.removeprefix("s3://")
            _check_bucket_name(text, bucket)
            return cls("s3", bucket, "")
        location = ObjectURI.parse(trimmed)
        if location.scheme == "file":
            return cls("file", "", os.path.realpath(location.key))
        return cls(location.scheme, location.bucket, location.key)

    def holds(self, location: ObjectURI) -> bool:
        """Whether `location` is this prefix or lies under it. A prefix ends at a path segment:
        `s3://b/out` holds `s3://b/out/a.png`, not `s3://b/outside.png`."""
        if location.scheme != self.scheme:
            return False
        if self.scheme == "file":
            # Resolved as the local store resolves it, so that a link cannot lead elsewhere.
            return lies_under(real_path(location.key), self.key)
        return location.bucket == self.bucket and (
            not self.key or location.key == self.key or location.key.startswith(f"{self.key}/")
        )

    def __str__(self) -> str:
        if self.scheme == "file":
            return Path(self.key).as_uri()
        return f"s3://{self.bucket}/{self.key}".rstrip("/")


@dataclass(frozen=True)
class UriPolicy:
    """Where a job may read its input and write its output. The producer checks it at submit and
    the worker again before each attempt, since a row may come from an older producer.

    * An output lies under one of `outputs` and is no other job's output (the job store checks
      that part). A `file://` URI is accepted only where a prefix is itself `file://`.
    * An input lies under one of `inputs`, when there are any, and never under `outputs`: a
      job cannot read what another job writes or may still be writing.
    * Nothing lies under `reserved`: the model weights, and the embedded mode's database file
      and broker folder.
    """

    outputs: tuple[Prefix, ...]
    inputs: tuple[Prefix, ...] = ()
    reserved: tuple[Prefix, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> UriPolicy:
        """The policy of TOONQ_OUTPUT_PREFIX, TOONQ_ALLOWED_OUTPUT_PREFIXES,
        TOONQ_ALLOWED_INPUT_PREFIXES and TOONQ_MODEL; ConfigurationError if a prefix is no
        location."""
        return cls(
            outputs=_prefixes(
                "TOONQ_OUTPUT_PREFIX or TOONQ_ALLOWED_OUTPUT_PREFIXES",
                (settings.output_prefix, *settings.allowed_output_prefixes),
            ),
            inputs=_prefixes("TOONQ_ALLOWED_INPUT_PREFIXES", settings.allowed_input_prefixes),
            reserved=_reserved(settings),
        )

    @property
    def file_prefixes(self) -> tuple[Prefix, ...]:
        """The `file://` prefixes: the folders, besides TOONQ_HOME, that jobs may use."""
        return tuple(prefix for prefix in (*self.outputs, *self.inputs) if prefix.scheme == "file")

    def check_input(self, uri: str) -> ObjectURI:
        """`uri` parsed; InvalidURIError if a job may not read it."""
        location = self._check_common(uri, "input")
        if holder := self.output_prefix_of(location):
            raise InvalidURIError(
                f"input URI {uri!r} lies under the output prefix {holder}: "
                "jobs do not read what jobs write"
            )
        if self.inputs and not _held(location, self.inputs):
            raise InvalidURIError(
                f"input URI {uri!r} is outside the allowed input prefixes "
                f"(TOONQ_ALLOWED_INPUT_PREFIXES: {_listed(self.inputs)})"
            )
        return location

    def output_prefix_of(self, location: ObjectURI) -> Prefix | None:
        """The output prefix that holds `location`, if any: where jobs write."""
        return _held(location, self.outputs)

    def check_output(self, uri: str) -> ObjectURI:
        """`uri` parsed; InvalidURIError if a job may not write it."""
        location = self.check_staged(uri)
        if STAGING_FOLDER in location.key.split("/"):
            raise InvalidURIError(
                f"output URI {uri!r} lies in a {STAGING_FOLDER} folder, where toonq stages "
                "the outputs of attempts"
            )
        return location

    def check_staged(self, uri: str) -> ObjectURI:
        """`uri` parsed; InvalidURIError unless it lies where outputs may be written: what a
        staged output (`staged_output_uri`) must pass, as an output does."""
        location = self._check_common(uri, "output")
        if not _held(location, self.outputs):
            raise InvalidURIError(
                f"output URI {uri!r} is outside the output prefixes (TOONQ_OUTPUT_PREFIX, "
                f"TOONQ_ALLOWED_OUTPUT_PREFIXES: {_listed(self.outputs)})"
            )
        return location

    def _check_common(self, uri: str, role: str) -> ObjectURI:
        location = ObjectURI.parse(uri)
        if location.scheme == "file" and not self.file_prefixes:
            raise InvalidURIError(
                f"{role} URI {uri!r}: file:// URIs are accepted only where TOONQ_OUTPUT_PREFIX "
                "or an allowed prefix is a file:// URI"
            )
        if holder := _held(location, self.reserved):
            raise InvalidURIError(f"{role} URI {uri!r} lies under {holder}, which toonq keeps")
        return location


def _prefixes(variable: str, texts: Iterable[str]) -> tuple[Prefix, ...]:
    try:
        return tuple(Prefix.parse(text) for text in texts)
    except InvalidURIError as exc:
        raise ConfigurationError(f"{variable}: {exc}") from None


def _reserved(settings: Settings) -> tuple[Prefix, ...]:
    """The locations toonq itself reads or writes: the weights (TOONQ_MODEL when it is a URI
    or a path), and in the embedded mode the SQLite database and the broker's folder."""
    paths: list[Path] = []
    reserved: list[Prefix] = []
    if settings.model.startswith(("s3://", "file://")):
        reserved += _prefixes("TOONQ_MODEL", [settings.model])
    elif settings.model.startswith(("/", ".", "~")):
        paths.append(Path(settings.model).expanduser().absolute())
    database = make_url(settings.database_url)
    if database.get_backend_name() == "sqlite" and database.database not in (None, "", ":memory:"):
        file = Path(database.database).absolute()
        # With its journal: SQLite writes "<name>-journal", "-wal" and "-shm" beside it.
        paths += [file, *(file.with_name(file.name + suffix) for suffix in _SQLITE_SIDE_FILES)]
    if settings.is_embedded_broker:
        paths.append(settings.broker_folder)
    return (*reserved, *(Prefix("file", "", os.path.realpath(path)) for path in paths))


_SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def _held(location: ObjectURI, prefixes: Iterable[Prefix]) -> Prefix | None:
    """The first of `prefixes` that holds `location`."""
    return next((prefix for prefix in prefixes if prefix.holds(location)), None)


def _listed(prefixes: Iterable[Prefix]) -> str:
    return ", ".join(map(str, prefixes)) or "none"
