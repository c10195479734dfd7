"""The local backend: `file://` URIs under root folders, written atomically. Confinement to the
roots is in test_security.py."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from toonq.shared.errors import (
    ImageTooLargeError,
    InputAccessDeniedError,
    InputNotFoundError,
    InvalidURIError,
    OutputAccessDeniedError,
    StorageUnavailableError,
)
from toonq.shared.storage.local import LocalStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# --- Local files ----------------------------------------------------------------------------------


def test_local_put_get_round_trip(tmp_path: Path) -> None:
    store = LocalStore([tmp_path])
    uri = (tmp_path / "new" / "folders" / "cat.png").as_uri()

    store.put(uri, PNG, content_type="image/png")
    store.put(uri, PNG[::-1], content_type="image/png")  # replaces

    assert store.get(uri, max_bytes=len(PNG)) == PNG[::-1]
    assert [path.name for path in (tmp_path / "new" / "folders").iterdir()] == ["cat.png"]


def test_local_put_creates_files_as_open_does(tmp_path: Path) -> None:
    uri = (tmp_path / "cat.png").as_uri()
    previous = os.umask(0o027)
    try:
        LocalStore([tmp_path]).put(uri, PNG, content_type="image/png")
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "cat.png").stat().st_mode) == 0o640  # 0o666 less the umask
    assert (tmp_path / "cat.png").read_bytes() == PNG


def test_local_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="does not exist"):
        LocalStore([tmp_path]).get((tmp_path / "missing.png").as_uri(), max_bytes=100)
    with pytest.raises(InputNotFoundError):
        LocalStore([tmp_path]).get(tmp_path.as_uri(), max_bytes=100)  # a folder


def test_local_file_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(PNG)

    with pytest.raises(ImageTooLargeError):
        LocalStore([tmp_path]).get(path.as_uri(), max_bytes=len(PNG) - 1)


def test_local_permission_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    monkeypatch.setattr("toonq.shared.storage.local.os.open", deny)  # how get and put open

    with pytest.raises(InputAccessDeniedError):
        LocalStore([tmp_path]).get(path.as_uri(), max_bytes=len(PNG))
    with pytest.raises(OutputAccessDeniedError):
        LocalStore([tmp_path]).put(path.as_uri(), PNG, content_type="image/png")


def test_local_put_under_a_file_is_denied(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    uri = (tmp_path / "file" / "cat.png").as_uri()

    assert not LocalStore([tmp_path]).exists_bucket(uri)
    with pytest.raises(OutputAccessDeniedError):
        LocalStore([tmp_path]).put(uri, PNG, content_type="image/png")


def test_local_failed_put_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("toonq.shared.storage.local.os.replace", fail)

    with pytest.raises(StorageUnavailableError, match="No space"):
        LocalStore([tmp_path]).put((tmp_path / "cat.png").as_uri(), PNG, content_type="image/png")
    assert list(tmp_path.iterdir()) == []


def test_local_exists_bucket(tmp_path: Path) -> None:
    assert LocalStore([tmp_path]).exists_bucket((tmp_path / "not" / "yet" / "cat.png").as_uri())


def test_local_list_objects_stays_within_the_roots(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "in").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "in" / "cat.png").write_bytes(PNG)
    (elsewhere / "dog.png").write_bytes(PNG)
    (root / "in" / "dog.png").symlink_to(elsewhere / "dog.png")  # read later, and refused then
    (root / "in" / "linked").symlink_to(elsewhere, target_is_directory=True)  # not followed
    store = LocalStore([root])

    assert list(store.list_objects((root / "in").as_uri())) == [
        (root / "in" / name).as_uri() for name in ("cat.png", "dog.png")
    ]
    with pytest.raises(InvalidURIError, match="outside the folders"):
        list(store.list_objects(elsewhere.as_uri()))
    with pytest.raises(InvalidURIError, match="outside the folders"):
        list(store.list_objects((root / "in" / "linked").as_uri()))
    with pytest.raises(InvalidURIError, match="file://"):
        list(store.list_objects("s3://bucket/in/"))


def test_local_copy_replaces_the_target_whole_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore([tmp_path])
    source, target = tmp_path / "staged.png", tmp_path / "out" / "cat.png"
    source.write_bytes(PNG)
    target.parent.mkdir()
    target.write_bytes(PNG[::-1])

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr("toonq.shared.storage.local.os.replace", fail)
        with pytest.raises(StorageUnavailableError, match="No space"):
            store.copy(source.as_uri(), target.as_uri())
    assert [path.name for path in target.parent.iterdir()] == ["cat.png"]
    assert target.read_bytes() == PNG[::-1]

    store.copy(source.as_uri(), target.as_uri())

    assert target.read_bytes() == PNG
    assert [path.name for path in target.parent.iterdir()] == ["cat.png"]


def test_local_copy_of_a_folder_is_of_nothing(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()

    with pytest.raises(InputNotFoundError, match="does not exist"):
        LocalStore([tmp_path]).copy((tmp_path / "folder").as_uri(), (tmp_path / "a.png").as_uri())
    assert not (tmp_path / "a.png").exists()


def test_local_copy_outlives_its_source_and_creates_the_target_folder(tmp_path: Path) -> None:
    store = LocalStore([tmp_path])
    source, target = tmp_path / "staged.png", tmp_path / "new" / "cat.png"
    store.put(source.as_uri(), PNG, content_type="image/png")

    store.copy(source.as_uri(), target.as_uri())
    store.delete(source.as_uri())
    store.put(source.as_uri(), PNG[::-1], content_type="image/png")  # a later attempt's

    assert store.get(target.as_uri(), max_bytes=len(PNG)) == PNG
    assert [path.name for path in target.parent.iterdir()] == ["cat.png"]


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_local_copy_where_links_are_refused_copies_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    def refuse(*args: object) -> None:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr("toonq.shared.storage.local.os.link", refuse)
    store = LocalStore([tmp_path])
    source, target = tmp_path / "staged.png", tmp_path / "out" / "cat.png"
    source.write_bytes(PNG)

    store.copy(source.as_uri(), target.as_uri())

    assert target.read_bytes() == PNG
    assert target.stat().st_ino != source.stat().st_ino
    with pytest.raises(InputNotFoundError, match="does not exist"):
        store.copy((tmp_path / "gone.png").as_uri(), target.as_uri())
