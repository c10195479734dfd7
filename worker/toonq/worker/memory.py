"""A worker's memory budget for images, so that a burst of large ones waits instead of OOM-killing
the process (and every job in flight with it).

A job reserves the host memory its images will take (`MattingEngine.host_bytes`, from the size in
the image's header) before it decodes, and gives it back once its output is uploaded or the job
failed. While the budget is spent, jobs wait their turn, first come first served: a large image
is not overtaken for ever by small ones. A job that could never fit fails at once.

The budget is `TOONQ_MEMORY_BUDGET_MB`, or else what the container may use (its cgroup memory
limit, or the machine's RAM without one) less what the process needs besides images: its own
peak memory (not counting the libraries' file pages) through the model's warm-up, and the
compressed inputs of every job in flight (`TOONQ_CONCURRENCY` × `TOONQ_MAX_INPUT_BYTES`), which
are downloaded before they can be counted.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toonq.shared.errors import ConfigurationError, ImageTooLargeError
from toonq.worker import metrics

MIB = 1024 * 1024
#: cgroup v1 reports "no limit" as a number near 2**63 (rounded down to a page).
_UNLIMITED = 1 << 62
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")
_PROC_STATUS = Path("/proc/self/status")


class MemoryBudget:
    """At most `total_bytes` reserved at once; `reserved` blocks, in arrival order, until a
    reservation fits. Only jobs holding a reservation hold images, and none of them waits for
    another reservation, so every holder can finish and the line always moves."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes < 1:
            raise ValueError(f"a memory budget holds at least one byte, got {total_bytes}")
        self.total_bytes = total_bytes
        self._used = 0
        self._line: deque[object] = deque()
        self._changed = threading.Condition()
        metrics.set_memory_budget(total_bytes)

    @property
    def reserved_bytes(self) -> int:
        with self._changed:
            return self._used

    @contextmanager
    def reserved(self, nbytes: int, *, what: str) -> Iterator[None]:
        """Hold `nbytes` for the block, waiting for them first. `what` names what needs them
        (`a 4000x3000 image`), for the `ImageTooLargeError` of a need larger than the budget."""
        if nbytes > self.total_bytes:
            raise ImageTooLargeError(
                f"{what} needs about {_mib(nbytes)} MiB of memory, more than this worker's "
                f"whole memory budget of {_mib(self.total_bytes)} MiB (TOONQ_MEMORY_BUDGET_MB)"
            )
        self._acquire(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)

    def _acquire(self, nbytes: int) -> None:
        turn = object()
        with self._changed:
            self._line.append(turn)
            try:
                while self._line[0] is not turn or self._used + nbytes > self.total_bytes:
                    self._changed.wait()
            finally:
                self._line.remove(turn)
                # The next in line may fit now (or, if this wait was interrupted, be first).
                self._changed.notify_all()
            self._set_used(self._used + nbytes)

    def _release(self, nbytes: int) -> None:
        with self._changed:
            self._set_used(self._used - nbytes)
            self._changed.notify_all()

    def _set_used(self, used: int) -> None:
        self._used = used
        metrics.set_memory_reserved(used)


def default_budget_bytes(
    *, concurrency: int, max_input_bytes: int, limit_bytes: int | None = None
) -> int:
    """The budget when `TOONQ_MEMORY_BUDGET_MB` is unset, called once the model is warm: the
    memory limit less the process's peak so far and the compressed inputs in flight."""
    limit = memory_limit_bytes() if limit_bytes is None else limit_bytes
    held = peak_private_bytes()
    inputs = concurrency * max_input_bytes
    budget = limit - held - inputs
    if budget < 1:
        raise ConfigurationError(
            f"no memory is left for images: the limit of {_mib(limit)} MiB, less the "
            f"{_mib(held)} MiB the worker holds with its model and {_mib(inputs)} MiB for "
            f"{concurrency} inputs of up to TOONQ_MAX_INPUT_BYTES; raise the limit, lower "
            "TOONQ_CONCURRENCY or TOONQ_MAX_INPUT_BYTES, or set TOONQ_MEMORY_BUDGET_MB"
        )
    return budget


def memory_limit_bytes(
    *, cgroup_root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP
) -> int:
    """What this process may use: the lowest memory limit of its cgroup and the groups above it
    (v2 `memory.max`, v1 `memory.limit_in_bytes`), or the machine's RAM when none is set."""
    limits = [
        limit
        for folder in _cgroup_folders(cgroup_root, proc_cgroup)
        for name in ("memory.max", "memory.limit_in_bytes")
        if (limit := _read_limit(folder / name)) is not None
    ]
    return min([*limits, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")])


def peak_private_bytes(status: Path = _PROC_STATUS) -> int:
    """The process's peak resident memory so far (VmHWM) less its file-backed pages now (the
    libraries' code and data, which the kernel may drop and read again): about the peak of its
    own allocations. 0 where /proc does not say."""
    try:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        kib = {name: int(fields[name].split()[0]) for name in ("VmHWM", "RssFile", "RssShmem")}
    except (OSError, ValueError, KeyError):
        return 0
    return max(0, kib["VmHWM"] - kib["RssFile"] - kib["RssShmem"]) * 1024


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """The folders of this process's memory cgroup and of its ancestors, v2 and v1, and the
    mount points themselves (a container sees its own group there)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    folders = [root, root / "memory"]
    for line in lines:
        _, controllers, path = line.split(":", 2)
        mount = root if controllers == "" else root / "memory"
        if controllers == "" or "memory" in controllers.split(","):
            relative = Path(path.lstrip("/"))
            folders += [mount / relative, *(mount / parent for parent in relative.parents)]
    return folders


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= _UNLIMITED:
        return None
    return int(text)


def _mib(nbytes: int) -> int:
    return -(-nbytes // MIB)
