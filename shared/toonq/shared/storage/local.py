"""`file://` URIs on a local (or mounted) file system, confined to root folders."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from toonq.shared.errors import (
    InputAccessDeniedError,
    InputNotFoundError,
    InvalidURIError,
    OutputAccessDeniedError,
    StorageUnavailableError,
)
from toonq.shared.storage.paths import lies_under, real_path
from toonq.shared.storage.store import too_large_error
from toonq.shared.storage.uri import Prefix, parse_as

#: What `link` fails with where a copy must be made instead: another device, too many links to
#: the file, or a file system without hard links (or one that refuses them, as EPERM says).
_NO_LINKS = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})


class LocalStore:
    """`file://` URIs on a local (or mounted) file system, confined to root folders.

    A path is resolved (symbolic links followed, as the kernel would) before anything is read or
    written, and refused with InvalidURIError unless it lies under one of the roots. Paths with
    '.' or '..' segments are refused when parsed. This guards against URIs that point elsewhere,
    not against a local user who swaps in a symbolic link between the check and the access.
    Paths are resolved by `paths.real_path`, which remembers folders.

    Files are read and written through their descriptors: a Python file object costs three
    system calls more to open (fstat, isatty, lseek), and each call lets go of the GIL that a
    worker's job threads share.
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = tuple(Path(os.path.realpath(root)) for root in roots)
        if not self.roots:
            raise ValueError("a LocalStore needs at least one root folder")
        self._root_strings = tuple(str(root) for root in self.roots)

    def _resolve(self, uri: str) -> str:
        """The real path that `uri` names; InvalidURIError if it lies outside the roots."""
        return self._confined(real_path(str(parse_as(uri, "file").path)), uri)

    def _confined(self, resolved: str, uri: str) -> str:
        if any(lies_under(resolved, root) for root in self._root_strings):
            return resolved
        allowed = ", ".join(self._root_strings)
        raise InvalidURIError(f"{uri!r} is outside the folders toonq may use ({allowed})")

    def get(self, uri: str, *, max_bytes: int) -> bytes:
        path = self._resolve(uri)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer. O_NOFOLLOW: the path was
            # resolved, so a link here was planted since.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode):
                    raise InputNotFoundError(f"{uri} is not a regular file")
                if status.st_size > max_bytes:
                    raise too_large_error(uri, max_bytes, size=status.st_size)
                # At most one byte more than allowed, in case the file grew since fstat.
                data = _read_up_to(fd, max_bytes + 1, piece=status.st_size + 1)
            finally:
                os.close(fd)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise InputNotFoundError(f"{uri} does not exist") from exc
        except PermissionError as exc:
            raise InputAccessDeniedError(f"{uri}: permission denied") from exc
        except OSError as exc:
            raise StorageUnavailableError(f"{uri}: read failed: {exc}") from exc
        if len(data) > max_bytes:
            raise too_large_error(uri, max_bytes)
        return data

    def put(self, uri: str, data: bytes, *, content_type: str) -> None:
        """Write atomically: readers see the old file or the whole new one, never a part."""
        self._replace(uri, _written(lambda fd: _write_all(fd, data)))

    def copy(self, source_uri: str, target_uri: str) -> None:
        """Copy atomically, as `put` writes: as a hard link to the source's file where the file
        system allows one (its data is neither read nor written again, and was made durable
        when it was put), else byte by byte."""
        source = self._resolve(source_uri)
        try:
            self._replace(target_uri, _linked_to(source, source_uri))
            return
        except _LinksRefusedError:
            pass
        try:
            original = open(source, "rb")  # noqa: SIM115 (closed by the with)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise InputNotFoundError(f"{source_uri} does not exist") from exc
        except PermissionError as exc:
            raise InputAccessDeniedError(f"{source_uri}: permission denied") from exc
        except OSError as exc:
            raise StorageUnavailableError(f"{source_uri}: read failed: {exc}") from exc
        with original:
            self._replace(target_uri, _written(lambda fd: _copy_into(fd, original)))

    def delete(self, uri: str) -> None:
        path = self._resolve(uri)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except (PermissionError, IsADirectoryError) as exc:
            raise OutputAccessDeniedError(f"{uri}: cannot delete: {exc}") from exc
        except OSError as exc:
            raise StorageUnavailableError(f"{uri}: delete failed: {exc}") from exc

    def _replace(self, uri: str, create: Callable[[str], object]) -> None:
        """Replace the file at `uri`, atomically, with the one `create` makes at a path."""
        path = self._resolve(uri)
        folder, name = os.path.split(path)
        # A unique name beside the target (same file system, so os.replace is atomic), not
        # mkstemp's: its 0600 would leave the published file unreadable to others.
        temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            try:
                create(temporary)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                create(temporary)
            try:
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
        except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise OutputAccessDeniedError(f"{uri}: cannot write: {exc}") from exc
        except OSError as exc:
            raise StorageUnavailableError(f"{uri}: write failed: {exc}") from exc

    def exists_bucket(self, uri: str) -> bool:
        """Whether `put` could create the file's folder: nothing but folders above it.
        InvalidURIError if `uri` lies outside the roots."""
        folder = Path(self._resolve(uri)).parent
        while not folder.exists():
            folder = folder.parent
        return folder.is_dir()

    def list_objects(self, prefix: str) -> Iterator[str]:
        """The regular files under the folder, symbolic links to files included (the roots
        confine each file when it is read), links to folders not followed. A path that is no
        folder holds nothing, as an S3 prefix that no key starts with."""
        folder = Prefix.parse(prefix)
        if folder.scheme != "file":
            raise InvalidURIError(f"{prefix!r}: expected a file:// URI")
        top = self._confined(str(folder.key), prefix)
        if not os.path.isdir(top):
            return

        def fail(exc: OSError) -> None:
            raise StorageUnavailableError(f"{prefix}: listing failed: {exc}") from exc

        # Sorted as a whole, as S3 lists keys: a folder's files do not all come before its
        # subfolders' ("a/b/c.png" < "a/z.png").
        found = [
            os.path.join(parent, name)
            for parent, _, files in os.walk(top, onerror=fail)
            for name in files
        ]
        for path in sorted(found):
            if os.path.isfile(path):
                yield Path(path).as_uri()


class _LinksRefusedError(Exception):
    """The file system refuses a hard link here: the copy is made byte by byte instead."""


def _read_up_to(fd: int, limit: int, *, piece: int) -> bytes:
    """At most `limit` bytes of `fd`, to its end if that comes first, asked for `piece` bytes
    at a time (not `limit`: a read allocates what it asks for)."""
    chunks = []
    while limit > 0 and (chunk := os.read(fd, min(limit, piece))):
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_into(fd: int, source: BinaryIO) -> None:
    with open(fd, "wb", closefd=False) as target:
        shutil.copyfileobj(source, target)


def _written(write: Callable[[int], object]) -> Callable[[str], None]:
    """What creates a new file at a path from what `write` writes into its descriptor, made
    durable."""

    def create(path: str) -> None:
        # Created as open(path, "xb") would: never over another file, 0o666 less the umask.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            try:
                write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(path)
            raise

    return create


def _linked_to(source: str, source_uri: str) -> Callable[[str], None]:
    """What creates a hard link to `source` at a path."""

    def create(path: str) -> None:
        try:
            os.link(source, path)
        except FileNotFoundError:
            if not os.path.isfile(source):
                raise InputNotFoundError(f"{source_uri} does not exist") from None
            raise  # the target's folder, which `_replace` creates
        except OSError as exc:
            if exc.errno in _NO_LINKS:
                raise _LinksRefusedError from exc
            raise

    return create
