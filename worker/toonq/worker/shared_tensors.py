"""Tensors that two processes of one worker share in memory, without pickling or copying them.

A job process writes a model input (or an image's pixels) into a block of shared memory (a file
in a folder of `/dev/shm`, which the worker makes and removes), sends the block's name, shape and
dtype, and reads the logits (or the alpha matte) back from the same block. The model process
maps the block by its name once and sees the input in place. Blocks are reused: a job process
keeps the blocks it freed, by size, for the next inputs of that size, so that the memory is
mapped once, not once per image.
"""

from __future__ import annotations

import mmap
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from toonq.shared.errors import SharedMemoryFullError

#: Where a worker's blocks live: memory, not disk (in a container, size /dev/shm to the jobs in
#: flight: Docker's default of 64 MiB holds a handful of 1024² inputs).
DEFAULT_ROOT = Path("/dev/shm")


def tensor_in(
    buffer: mmap.mmap,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    stride: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """A tensor of `shape` and `dtype` over the start of `buffer`, sharing its memory: laid out
    row-major, or by `stride`, a permutation of it (channels last, say), so that a copy between
    it and a tensor of the same layout is one pass of memory."""
    count = 1
    for dim in shape:
        count *= dim
    flat = torch.frombuffer(buffer, dtype=dtype, count=count)
    if stride is None:
        return flat.view(shape)
    if not _dense(shape, stride):
        raise ValueError(f"stride {stride} does not lay out {shape} densely")
    return flat.as_strided(shape, stride)


def dense_stride(tensor: torch.Tensor) -> tuple[int, ...]:
    """`tensor`'s stride if it lays it out densely (row-major or a permutation of it), else the
    row-major stride (the tensor is then copied into it)."""
    stride = tuple(tensor.stride())
    return stride if _dense(tuple(tensor.shape), stride) else _row_major(tuple(tensor.shape))


def _row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for dim in reversed(shape):
        stride.append(step)
        step *= dim
    return tuple(reversed(stride))


def _dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether `stride` visits every element of `shape` once, in some order of its dimensions."""
    order = sorted(range(len(shape)), key=lambda i: (stride[i], shape[i]))
    step = 1
    for i in order:
        if shape[i] != 1 and stride[i] != step:
            return False
        step *= shape[i]
    return True


def nbytes_of(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * torch.empty((), dtype=dtype).element_size()


@dataclass(eq=False)
class Block:
    """One block of shared memory that a job process owns."""

    name: str
    size: int
    buffer: mmap.mmap

    def tensor(
        self, shape: tuple[int, ...], dtype: torch.dtype, stride: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        return tensor_in(self.buffer, shape, dtype, stride)


class BlockPool:
    """The blocks of one job process, in `folder`: taken for one request, then given back.

    Freed blocks are kept for inputs of their size, up to `keep_bytes` of them; past that the
    oldest are deleted (`give_back` names them, for the model process to unmap). A block's
    memory is allocated when it is made, so that a full folder is an error then, not a crash
    (SIGBUS) when the input is written."""

    def __init__(self, folder: Path, *, keep_bytes: int) -> None:
        self._folder = folder
        self._keep_bytes = keep_bytes
        #: Oldest first.
        self._free: list[Block] = []
        self._free_bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Block:
        with self._lock:
            for index, block in enumerate(self._free):
                if block.size == nbytes:
                    del self._free[index]
                    self._free_bytes -= nbytes
                    return block
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path = self._folder / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, nbytes)
            buffer = mmap.mmap(fd, nbytes)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise SharedMemoryFullError(
                f"no room for a {nbytes // 1024} KiB block in {self._folder} ({exc}): give "
                "the worker more shared memory (/dev/shm) or fewer jobs in flight"
            ) from exc
        finally:
            os.close(fd)
        return Block(name, nbytes, buffer)

    def give_back(self, block: Block) -> list[str]:
        """Keep `block` for another input; the names of the blocks deleted to make room."""
        with self._lock:
            self._free.append(block)
            self._free_bytes += block.size
            dropped = []
            while self._free_bytes > self._keep_bytes:
                oldest = self._free.pop(0)
                self._free_bytes -= oldest.size
                dropped.append(oldest)
        for old in dropped:
            (self._folder / old.name).unlink(missing_ok=True)
        return [old.name for old in dropped]


class MappedBlocks:
    """The model process's view of the blocks in `folder`: each mapped on first use and kept."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._mapped: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()

    def forget(self, names: list[str]) -> None:
        """Unmap deleted blocks (once the tensors over them are gone)."""
        with self._lock:
            for name in names:
                self._mapped.pop(name, None)

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        stride: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        with self._lock:
            buffer = self._mapped.get(name)
            if buffer is None:
                if "/" in name or name.startswith("."):
                    raise ValueError(f"not a block name: {name!r}")
                fd = os.open(self._folder / name, os.O_RDWR)
                try:
                    buffer = mmap.mmap(fd, 0)
                finally:
                    os.close(fd)
                self._mapped[name] = buffer
        if nbytes_of(shape, dtype) > len(buffer):
            raise ValueError(f"block {name} holds {len(buffer)} bytes, less than {shape} {dtype}")
        return tensor_in(buffer, shape, dtype, stride)
