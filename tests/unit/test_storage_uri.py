"""The URI policy: what `ObjectURI.parse` accepts and how URIs print. Bucket names, keys and
file paths that could cause harm are in test_security.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from toonq.shared.errors import InvalidURIError
from toonq.shared.storage import ObjectURI


def test_parse_s3_uri() -> None:
    uri = ObjectURI.parse("s3://bucket/some/key with spaces.png")
    assert (uri.scheme, uri.bucket, uri.key) == ("s3", "bucket", "some/key with spaces.png")
    assert str(uri) == "s3://bucket/some/key with spaces.png"


def test_parse_file_uri_round_trips_path_as_uri(tmp_path: Path) -> None:
    path = tmp_path / "a folder" / "cat #1 ü.png"

    uri = ObjectURI.parse(path.as_uri())

    assert (uri.scheme, uri.path) == ("file", path)
    assert str(uri) == path.as_uri()
    assert ObjectURI.parse("file://localhost/tmp/x.png").path == Path("/tmp/x.png")


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "/tmp/cat.png",
        "cat.png",
        "http://example.com/cat.png",
        "S3://bucket/key",
        "s3://",
        "s3://bucket",
        "s3://bucket/",
        "s3:///key",
        "file://host/tmp/cat.png",
        "file:///tmp/folder/",
        "file:///tmp/cat.png?version=2",
    ],
)
def test_parse_rejects_invalid_uris(uri: str) -> None:
    with pytest.raises(InvalidURIError, match="URI") as raised:
        ObjectURI.parse(uri)
    assert raised.value.code == "invalid_uri"
