"""The object store that `open_store` builds: each URI goes to the backend of its scheme, and
every backend keeps the same contract (`ObjectStore`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from toonq.shared.errors import InputNotFoundError, InvalidURIError
from toonq.shared.settings import Settings
from toonq.shared.storage import Storage, open_store

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
WEBP = b"RIFF\x00\x00\x00\x00WEBP" + bytes(range(256))

#: Where a test's objects go: the URI of a name, on one backend.
Place = Callable[[str], str]


@pytest.fixture
def store(s3_server: str, tmp_path: Path) -> Storage:
    settings = Settings.from_env({"TOONQ_HOME": str(tmp_path), "TOONQ_S3_ENDPOINT_URL": s3_server})
    return open_store(settings)


@pytest.fixture(params=["file", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "file":
        return lambda name: (tmp_path / name).as_uri()
    bucket: str = request.getfixturevalue("s3_bucket")
    return lambda name: f"s3://{bucket}/{name}"


def test_open_store_routes_by_scheme(store: Storage, s3_bucket: str, tmp_path: Path) -> None:
    s3_uri = f"s3://{s3_bucket}/cat.png"
    file_uri = (tmp_path / "cat.png").as_uri()

    store.put(s3_uri, PNG, content_type="image/png")
    store.put(file_uri, PNG[::-1], content_type="image/png")

    assert store.get(s3_uri, max_bytes=len(PNG)) == PNG
    assert store.get(file_uri, max_bytes=len(PNG)) == PNG[::-1]
    assert store.exists_bucket(s3_uri)
    assert store.exists_bucket(file_uri)
    with pytest.raises(InvalidURIError):
        store.get("gs://bucket/cat.png", max_bytes=1)


# --- Listing: the same contract for every backend -------------------------------------------------


@pytest.fixture(params=["s3", "file"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder, as a URI without the trailing slash: in the test's S3 bucket, or in TOONQ_HOME."""
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/in"
    return (tmp_path / "in").as_uri()


def test_list_objects_yields_what_lies_under_the_folder_in_key_order(
    store: Storage, folder: str
) -> None:
    for name in ("b.png", "a/z.jpg", "a/b/c.webp", "notes.txt"):
        store.put(f"{folder}/{name}", PNG, content_type="image/png")
    # Beside the folder, with its name as a prefix: not under it.
    store.put(f"{folder}side.png", PNG, content_type="image/png")
    store.put(f"{folder}-old/x.png", PNG, content_type="image/png")
    expected = [f"{folder}/{name}" for name in ("a/b/c.webp", "a/z.jpg", "b.png", "notes.txt")]

    assert list(store.list_objects(folder)) == expected
    assert list(store.list_objects(f"{folder}/")) == expected
    assert list(store.list_objects(f"{folder}/a/b")) == [f"{folder}/a/b/c.webp"]


def test_list_objects_of_a_folder_holding_nothing_yields_nothing(
    store: Storage, folder: str
) -> None:
    store.put(f"{folder}/cat.png", PNG, content_type="image/png")

    assert list(store.list_objects(f"{folder}/missing/")) == []
    assert list(store.list_objects(f"{folder}/cat.png")) == []  # an object, no folder


def test_list_objects_in_a_missing_bucket_is_input_not_found(store: Storage) -> None:
    with pytest.raises(InputNotFoundError, match="bucket 'no-such-bucket-toonq' does not exist"):
        list(store.list_objects("s3://no-such-bucket-toonq/in/"))


def test_copy_replaces_the_target_with_the_source(store: Storage, place: Place) -> None:
    source, target = place("staging/cat-1.png"), place("out/cat.png")
    store.put(source, PNG, content_type="image/png")
    store.put(target, PNG[::-1], content_type="image/png")

    store.copy(source, target)

    assert store.get(target, max_bytes=len(PNG)) == PNG
    assert store.get(source, max_bytes=len(PNG)) == PNG  # kept


def test_copy_into_a_new_location(store: Storage, place: Place) -> None:
    source, target = place("staging/cat-1.png"), place("new/folder/cat.png")
    store.put(source, PNG, content_type="image/png")

    store.copy(source, target)

    assert store.get(target, max_bytes=len(PNG)) == PNG


def test_copying_a_missing_object_fails_and_leaves_the_target(store: Storage, place: Place) -> None:
    target = place("out/cat.png")
    store.put(target, PNG, content_type="image/png")

    with pytest.raises(InputNotFoundError, match="does not exist"):
        store.copy(place("staging/missing.png"), target)

    assert store.get(target, max_bytes=len(PNG)) == PNG


def test_delete_removes_the_object_and_tolerates_none(store: Storage, place: Place) -> None:
    uri = place("staging/cat-1.png")
    store.put(uri, PNG, content_type="image/png")

    store.delete(uri)
    store.delete(uri)  # already gone: nothing to do

    with pytest.raises(InputNotFoundError):
        store.get(uri, max_bytes=len(PNG))


def test_s3_copy_keeps_the_content_type(
    store: Storage, s3_bucket: str, s3_client: S3Client
) -> None:
    source, target = f"s3://{s3_bucket}/staging/cat-1.webp", f"s3://{s3_bucket}/out/cat.webp"
    store.put(source, WEBP, content_type="image/webp")

    store.copy(source, target)

    assert s3_client.head_object(Bucket=s3_bucket, Key="out/cat.webp")["ContentType"] == (
        "image/webp"
    )


def test_a_copy_between_stores_is_refused(store: Storage, s3_bucket: str, tmp_path: Path) -> None:
    source = (tmp_path / "cat.png").as_uri()
    store.put(source, PNG, content_type="image/png")

    with pytest.raises(InvalidURIError, match="another store"):
        store.copy(source, f"s3://{s3_bucket}/cat.png")
