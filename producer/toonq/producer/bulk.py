"""The inputs of a bulk submit: URIs from arguments and lists, folders expanded into the images
they hold, and the idempotency key each URI derives from a prefix.

Nothing here writes: these are the steps before anything is validated and submitted.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from toonq.shared.errors import InvalidURIError, ToonqError
from toonq.shared.job import MAX_IDEMPOTENCY_KEY_LENGTH
from toonq.shared.storage import ObjectStore, ObjectURI, UriPolicy

#: What `expand` takes for an image, by the name's extension (in any case).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

#: The hex digits of the URI's SHA-256 in a derived idempotency key: 128 bits.
KEY_DIGEST_LENGTH = 32

#: The longest `--idempotency-prefix`: the key is the prefix, ":" and the digest.
MAX_IDEMPOTENCY_PREFIX_LENGTH = MAX_IDEMPOTENCY_KEY_LENGTH - 1 - KEY_DIGEST_LENGTH


@dataclass(frozen=True)
class Source:
    """A URI to submit (or, to expand, a folder) and where it came from, for error messages:
    "argument 2", "list.txt line 5", "under s3://bucket/in/"."""

    uri: str
    origin: str


def from_lines(lines: Iterable[str], name: str) -> Iterator[Source]:
    """One URI per line; blank lines and lines starting with '#' are skipped."""
    for number, line in enumerate(lines, start=1):
        uri = line.strip()
        if uri and not uri.startswith("#"):
            yield Source(uri, f"{name} line {number}")


@dataclass
class Expansion:
    """The images found under some folders, and what was left out of them."""

    images: list[Source] = field(default_factory=list)
    #: Objects left out because they lie under an output prefix (jobs do not read what jobs
    #: write), counted by prefix.
    outputs_skipped: Counter[str] = field(default_factory=Counter)
    #: Objects left out because their names do not end in an image extension.
    others_skipped: int = 0


def expand(folders: Iterable[Source], objects: ObjectStore, policy: UriPolicy) -> Expansion:
    """The image objects under each folder, in key order. A listing error names the folder's
    origin (`located`)."""
    expansion = Expansion()
    for folder in folders:
        try:
            for uri in objects.list_objects(folder.uri):
                if not is_image(uri):
                    expansion.others_skipped += 1
                elif holder := _output_prefix_of(uri, policy):
                    expansion.outputs_skipped[holder] += 1
                else:
                    expansion.images.append(Source(uri, f"under {folder.uri}"))
        except ToonqError as exc:
            raise located(exc, folder.origin) from exc
    return expansion


def is_image(uri: str) -> bool:
    return PurePosixPath(uri).suffix.lower() in IMAGE_EXTENSIONS


def _output_prefix_of(uri: str, policy: UriPolicy) -> str | None:
    try:
        holder = policy.output_prefix_of(ObjectURI.parse(uri))
    except InvalidURIError:
        return None  # validation names it, with its origin
    return None if holder is None else str(holder)


def unique(sources: Iterable[Source]) -> list[Source]:
    """Each URI once, where it first appears: a URI listed twice is one job."""
    first: dict[str, Source] = {}
    for source in sources:
        first.setdefault(source.uri, source)
    return list(first.values())


def idempotency_key(prefix: str, uri: str) -> str:
    """`prefix`, ':' and the first 32 hex digits of the SHA-256 of the URI's UTF-8 bytes: the
    same for the same URI on every run, and short enough for any URI."""
    digest = hashlib.sha256(uri.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{prefix}:{digest[:KEY_DIGEST_LENGTH]}"


def located(exc: ToonqError, origin: str) -> ToonqError:
    """`exc` again, of the same type and code, its message prefixed by where its URI came
    from."""
    return type(exc)(f"{origin}: {exc}", code=exc.code)
