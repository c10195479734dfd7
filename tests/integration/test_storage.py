"""The object store that `open_store` builds: each URI goes to the backend of its scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from toonq.shared.errors import InputNotFoundError, InvalidURIError
from toonq.shared.settings import Settings
from toonq.shared.storage import Storage, open_store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_open_store_routes_by_scheme(s3_server: str, s3_bucket: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"TOONQ_HOME": str(tmp_path), "TOONQ_S3_ENDPOINT_URL": s3_server})
    store = open_store(settings)
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


@pytest.fixture
def listing_store(s3_server: str, tmp_path: Path) -> Storage:
    return open_store(
        Settings.from_env({"TOONQ_HOME": str(tmp_path), "TOONQ_S3_ENDPOINT_URL": s3_server})
    )


def test_list_objects_yields_what_lies_under_the_folder_in_key_order(
    listing_store: Storage, folder: str
) -> None:
    for name in ("b.png", "a/z.jpg", "a/b/c.webp", "notes.txt"):
        listing_store.put(f"{folder}/{name}", PNG, content_type="image/png")
    # Beside the folder, with its name as a prefix: not under it.
    listing_store.put(f"{folder}side.png", PNG, content_type="image/png")
    listing_store.put(f"{folder}-old/x.png", PNG, content_type="image/png")
    expected = [f"{folder}/{name}" for name in ("a/b/c.webp", "a/z.jpg", "b.png", "notes.txt")]

    assert list(listing_store.list_objects(folder)) == expected
    assert list(listing_store.list_objects(f"{folder}/")) == expected
    assert list(listing_store.list_objects(f"{folder}/a/b")) == [f"{folder}/a/b/c.webp"]


def test_list_objects_of_a_folder_holding_nothing_yields_nothing(
    listing_store: Storage, folder: str
) -> None:
    listing_store.put(f"{folder}/cat.png", PNG, content_type="image/png")

    assert list(listing_store.list_objects(f"{folder}/missing/")) == []
    assert list(listing_store.list_objects(f"{folder}/cat.png")) == []  # an object, no folder


def test_list_objects_in_a_missing_bucket_is_input_not_found(listing_store: Storage) -> None:
    with pytest.raises(InputNotFoundError, match="bucket 'no-such-bucket-toonq' does not exist"):
        list(listing_store.list_objects("s3://no-such-bucket-toonq/in/"))
