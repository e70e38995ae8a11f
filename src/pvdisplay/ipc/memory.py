"""Mapping runs of memfd pages into one contiguous range of this process.

A Python `mmap.mmap` of anonymous memory reserves the range and owns its lifetime; the
runs are then placed over it with libc `mmap(MAP_FIXED | MAP_SHARED)`, one call per
run of consecutive pages. Because the range belongs to an `mmap.mmap`, Python tracks
every buffer export of it: `close()` refuses while a memoryview or numpy array still
points into it, instead of leaving a dangling view over unmapped memory.
"""

import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import numpy.typing as npt

from pvdisplay.wire import displif
from pvdisplay.wire.errors import HypervisorError


@dataclass(frozen=True)
class Segment:
    """`pages` consecutive pages of object `object_index`, from `first_page`."""

    object_index: int
    first_page: int
    pages: int


PAGE_SIZE = displif.PAGE_SIZE
"""Shared buffers come in Xen pages, so a buffer page and a granted page are one unit."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc_mmap = _libc.mmap
_libc_mmap.restype = ctypes.c_void_p
_libc_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10


def map_over(address: int, length: int, prot: int, fd: int, offset: int) -> None:
    """Map `fd` from `offset` over [address, address + length) of a range this process
    reserved, replacing what is there (MAP_FIXED | MAP_SHARED)."""
    placed = _libc_mmap(address, length, prot, mmap.MAP_SHARED | _MAP_FIXED, fd, offset)
    if placed == _MAP_FAILED:
        code = ctypes.get_errno()
        raise HypervisorError(code, f"mmap at offset {offset:#x} failed: {os.strerror(code)}")


REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
"""A memory object that could shrink would SIGBUS whoever maps it: size is frozen."""


def create_memfd(pages: int, name: str) -> int:
    """A new memory object of `pages` zero pages whose size can never change."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, pages * PAGE_SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sealed_pages(fd: int) -> int:
    """Pages in a memory object someone else made, after checking its size is frozen."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        size = os.fstat(fd).st_size
    except OSError:
        raise HypervisorError(errno.EINVAL, "not a memory object (memfd)") from None
    frozen = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    if seals & frozen != frozen or size % PAGE_SIZE or not size:
        raise HypervisorError(errno.EINVAL, "memory object size is not sealed to whole pages")
    return size // PAGE_SIZE


class SharedMapping:
    """Pages of memory objects mapped contiguously (implements `pvdisplay.hv.Mapping`)."""

    def __init__(
        self,
        fds: Sequence[int],
        segments: Sequence[Segment],
        writable: bool,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        pages = sum(seg.pages for seg in segments)
        if pages < 1:
            raise HypervisorError(errno.EINVAL, "nothing to map")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._region = mmap.mmap(-1, pages * PAGE_SIZE, flags=mmap.MAP_PRIVATE, prot=prot)
        self._address = int(np.frombuffer(self._region, np.uint8, count=1).ctypes.data)
        offset = 0
        for seg in segments:
            length = seg.pages * PAGE_SIZE
            try:
                map_over(
                    self._address + offset,
                    length,
                    prot,
                    fds[seg.object_index],
                    seg.first_page * PAGE_SIZE,
                )
            except HypervisorError:
                self._region.close()
                raise
            offset += length
        self._writable = writable
        self._on_close = on_close

    @property
    def address(self) -> int:
        return self._address

    @property
    def length(self) -> int:
        return len(self._region)

    @property
    def pages(self) -> int:
        return len(self._region) // PAGE_SIZE

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def closed(self) -> bool:
        return self._region.closed

    def view(self) -> memoryview:
        view = memoryview(self._region)
        return view if self._writable else view.toreadonly()

    def array(
        self, dtype: npt.DTypeLike = np.uint8, shape: Sequence[int] | None = None
    ) -> npt.NDArray[np.generic]:
        flat = np.frombuffer(self._region, dtype=dtype)
        return flat if shape is None else flat[: int(np.prod(shape))].reshape(shape)

    def close(self) -> None:
        if self._region.closed:
            return
        try:
            self._region.close()
        except BufferError:
            raise HypervisorError(
                errno.EBUSY, "mapping still has views or arrays; drop them before close()"
            ) from None
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
