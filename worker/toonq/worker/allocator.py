"""Keep freed image buffers in the process for the next image, rather than hand them back to the
kernel and fault them in again.

glibc's malloc serves a large block (an image's pixels, a tensor) with a fresh `mmap` and unmaps
it when it is freed, so the next image's block is faulted in again page by page, each page
zeroed by the kernel. At 4 MP, compositing one image then cost 16 ms of system time besides its
11 ms of work. With blocks of up to 32 MiB (the most glibc takes) served from the heap and the
heap never trimmed, a worker reuses the memory of the images before: its resident size stays
at the peak of the images it held at once, which is what its memory budget is sized for. Every
thread allocates from the one main heap: a thread's own arena grows in heaps of 64 MiB, which
the buffers of a few 4 MP images overrun, and what overruns them is mapped afresh; an image
makes a few large allocations, so they contend little for the one lock.

An operator who tunes malloc (a `MALLOC_*` variable, `glibc.malloc` tunables, or another
allocator through `LD_PRELOAD`) keeps their setting: nothing is changed then, nor on a C
library other than glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

#: mallopt's parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: The largest block glibc serves from the heap (HEAP_MAX_SIZE / 2 on 64-bit hosts).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory at the top of the heap that glibc keeps rather than trims: the most mallopt
#: takes (an int), in effect all of it.
TRIM_THRESHOLD_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module says; True if it was tuned here."""
    if not _is_glibc() or _tuned_by_operator(os.environ):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        and libc.mallopt(_M_ARENA_MAX, 1)
    )


def _is_glibc() -> bool:
    # confstr asks the C library itself; platform.libc_ver() reads the interpreter's binary.
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False


def _tuned_by_operator(environ: Mapping[str, str]) -> bool:
    return (
        "LD_PRELOAD" in environ
        or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
        or any(name.startswith("MALLOC_") for name in environ)
    )
