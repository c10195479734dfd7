"""Local paths resolved as the kernel resolves them (every symbolic link followed), with the
resolution of their folders remembered.

Resolving a path walks each of its components in Python (`os.path.realpath`), and a job's paths
are resolved several times over (the URI policy's checks, then each access of the local store):
so a folder is resolved once and remembered, and a file's own name at each call. A folder that is
replaced by a link after it was first resolved is therefore not noticed: a URI cannot do that,
only a local user, against whom the confinement to folders does not guard (`LocalStore`).
"""

from __future__ import annotations

import functools
import os

#: How many resolved folders are remembered.
FOLDERS_REMEMBERED = 4096


@functools.lru_cache(maxsize=FOLDERS_REMEMBERED)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def real_path(path: str) -> str:
    """The absolute `path` with every symbolic link followed."""
    folder, name = os.path.split(path)
    resolved = os.path.join(_real_folder(folder), name)
    if os.path.islink(resolved):
        return os.path.realpath(resolved)
    return resolved


def lies_under(path: str, folder: str) -> bool:
    """Whether the resolved `path` is the resolved `folder` or lies in it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
