"""`pvdisplay.hv.GrantTable` over /dev/xen/gntalloc (own pages) and /dev/xen/gntdev (theirs).

gntalloc allocates pages and grants them to one domain in the same call; it cannot
grant pages that already exist, nor grant a page to a second domain. Guest memory is
therefore a fixed range of this process whose pages are swapped underneath it:

- `alloc()` gives a sealed memfd, not granted to anyone.
- `grant(domid, memory, ...)` allocates fresh gntalloc pages granted to `domid`, copies
  the memory's contents into them and maps them over the same addresses
  (`MAP_FIXED`), so views and arrays taken before stay valid and see the same bytes.
- `end_access()` swaps a fresh memfd back in the same way and closes the gntalloc
  descriptor: gntalloc ends a grant only once no descriptor or mapping of its page is
  left, and Xen then defers freeing the page while the grantee still maps it.
- `share()` allocates granted pages directly, with nothing to copy.

Each allocation has a gntalloc descriptor of its own, so an exported handle of it
(`XenBuffers`) can carry that descriptor without exposing any other allocation.

A grant to this domain itself never reaches Xen: user space cannot grant a page twice,
and a domain does not need the hypervisor to reach its own memory. Such a grant is
recorded here under a *loopback ref* (from `LOOPBACK_REF_BASE`, far above any grant
table Xen builds) that this process's `map`, `end_access` and `export_from_refs`
resolve to the memory itself; no other domain can use it, as no other domain could
use a real grant to us either. Our own refs below that range are real grants and go
to gntdev like anyone else's.

Swapping copies the memory while other threads might write it; grants and their end
are connection set-up and teardown, which the display and input code do on one thread.
"""

import errno
import functools
import mmap
import os
import select
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from pvdisplay.hv import DOMID_FIRST_RESERVED, PAGE_SIZE, GuestMemory, HypervisorError
from pvdisplay.hv.xen import abi
from pvdisplay.hv.xen.device import Ioctl, ioctl, open_device
from pvdisplay.ipc.memory import Segment, SharedMapping, create_memfd, map_over

LOOPBACK_REF_BASE = 0xF000_0000
"""First loopback ref. Xen's grant tables hold at most max_grant_frames * 512 entries
(a few hundred thousand); refs from here up are never real ones."""


def _place(address: int, length: int, fd: int, offset: int) -> None:
    """Map `fd` at `offset` over [address, address + length), replacing what is there."""
    map_over(address, length, mmap.PROT_READ | mmap.PROT_WRITE, fd, offset)


P = ParamSpec("P")
R = TypeVar("R")


def _locked(
    method: "Callable[Concatenate[XenGrantTable, P], R]",
) -> "Callable[Concatenate[XenGrantTable, P], R]":
    @functools.wraps(method)
    def locked(table: "XenGrantTable", /, *args: P.args, **kwargs: P.kwargs) -> R:
        with table._lock:
            return method(table, *args, **kwargs)

    return locked


@dataclass(frozen=True)
class _Loopback:
    memory: "XenGuestMemory"
    page: int
    readonly: bool


class XenGuestMemory(SharedMapping):
    """Implements `pvdisplay.hv.GuestMemory`: one range whose pages are a memfd's or gntalloc's."""

    def __init__(self, table: "XenGrantTable", fd: int, first_page: int, pages: int) -> None:
        """Map `pages` of `fd` from `first_page`; the memory owns `fd` from here on."""
        try:
            super().__init__([fd], [Segment(0, first_page, pages)], True, self._release)
        except BaseException:
            os.close(fd)
            raise
        self.owner = table
        self._fd = fd
        self._first_page = first_page
        self.granted: list[int] = []
        """The refs of the foreign grant its pages carry now; empty while not granted."""
        self._exports: list[int] = []
        # Memory dropped unclosed gives its descriptors back; the table holds granted
        # memory, so only ungranted memory (a memfd) is ever collected.
        self._descriptors = [fd]
        self._finalizer = weakref.finalize(self, _close_all, self._descriptors, self._exports)

    @property
    def exported(self) -> bool:
        """Whether a handle exported from it (or a mapping of one) is still held anywhere."""
        alive = []
        for watch in self._exports:
            if _hung_up(watch):
                os.close(watch)
            else:
                alive.append(watch)
        self._exports[:] = alive
        return bool(alive)

    def backing(self) -> tuple[int, int]:
        """The descriptor and first page its pages are mapped from now."""
        if self.closed:
            raise HypervisorError(errno.EBADF, "guest memory is closed")
        return self._fd, self._first_page

    def watch_export(self, lease_reader: int) -> None:
        """Take a pipe read end that hangs up once an export of this memory is released."""
        self._exports.append(lease_reader)

    def rebase(self, fd: int, first_page: int) -> None:
        """Move the contents onto `fd`'s pages from `first_page` and map those in place.

        Takes ownership of `fd`; the old descriptor is closed once nothing maps it here.
        """
        offset = first_page * PAGE_SIZE
        try:
            try:
                copy = mmap.mmap(fd, self.length, mmap.MAP_SHARED, offset=offset)
            except OSError as exc:
                code = exc.errno or errno.EIO
                raise HypervisorError(code, f"mmap of new pages failed: {exc.strerror}") from None
            try:
                with self.view() as current:
                    copy[:] = current
            finally:
                copy.close()
            _place(self.address, self.length, fd, offset)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self._first_page = fd, first_page
        self._descriptors[:] = [fd]

    def _release(self) -> None:
        self.owner.forget(self)
        self._finalizer()


class _Unmap:
    """UNMAP_GRANT_REF for one gntdev mapping, then `then()`: on close(), or when the
    mapping is collected unclosed."""

    def __init__(
        self, table: "XenGrantTable", index: int, count: int, then: Callable[[], None] | None
    ) -> None:
        self._table = table
        self._index = index
        self._count = count
        self._then = then
        self._finalizer: weakref.finalize[..., object] | None = None

    def watch(self, mapping: SharedMapping) -> None:
        self._finalizer = weakref.finalize(mapping, self._run)

    def __call__(self) -> None:
        if self._finalizer is None or self._finalizer.detach() is not None:
            self._run()

    def _run(self) -> None:
        try:
            self._table.unmap(self._index, self._count)
        finally:
            if self._then is not None:
                self._then()


class XenGrantTable:
    """Implements `pvdisplay.hv.GrantTable`."""

    def __init__(
        self,
        domid: int,
        gntdev: int,
        open_gntalloc: Callable[[], int] = lambda: open_device("gntalloc"),
        call: Ioctl = ioctl,
    ) -> None:
        """Map through the open gntdev descriptor `gntdev` (owned from here on)."""
        self._domid = domid
        self._gntdev = gntdev
        self._open_gntalloc = open_gntalloc
        self._call = call
        # Bookkeeping only; the ring thread and the event loop may both grant and map.
        self._lock = threading.RLock()
        self._loopback: dict[int, _Loopback] = {}
        self._next_loopback = LOOPBACK_REF_BASE
        self._foreign: dict[int, XenGuestMemory] = {}

    def alloc(self, pages: int) -> XenGuestMemory:
        if pages < 1:
            raise HypervisorError(errno.EINVAL, "zero-page allocation")
        return XenGuestMemory(self, create_memfd(pages, "pvdisplay-guest"), 0, pages)

    @_locked
    def share(
        self, domid: int, pages: int, readonly: bool = False
    ) -> tuple[XenGuestMemory, list[int]]:
        if domid == self._domid:
            memory = self.alloc(pages)
            return memory, self.grant(domid, memory, range(pages), readonly)
        fd, first_page, refs = self._alloc_gref(domid, pages, readonly)
        memory = XenGuestMemory(self, fd, first_page, pages)
        self._granted(memory, refs)
        return memory, refs

    @_locked
    def grant(
        self, domid: int, memory: GuestMemory, pages: Sequence[int], readonly: bool = False
    ) -> list[int]:
        if not isinstance(memory, XenGuestMemory) or memory.owner is not self:
            raise HypervisorError(errno.EINVAL, "memory was not allocated by this domain")
        memory.backing()
        if list(pages) != list(range(memory.pages)):
            raise HypervisorError(errno.EINVAL, "gntalloc grants a whole allocation at once")
        if domid == self._domid:
            refs = list(range(self._next_loopback, self._next_loopback + memory.pages))
            self._next_loopback += memory.pages
            for page, ref in enumerate(refs):
                self._loopback[ref] = _Loopback(memory, page, readonly)
            return refs
        if memory.granted:
            raise HypervisorError(
                errno.EBUSY, "gntalloc grants a page to one domain; end that grant first"
            )
        if memory.exported:
            raise HypervisorError(errno.EBUSY, "memory is exported; new pages would not reach it")
        fd, first_page, refs = self._alloc_gref(domid, memory.pages, readonly)
        memory.rebase(fd, first_page)
        self._granted(memory, refs)
        return refs

    @_locked
    def end_access(self, refs: Sequence[int]) -> list[int]:
        ending: dict[XenGuestMemory, set[int]] = {}
        for ref in refs:
            if ref in self._loopback:
                continue
            memory = self._foreign.get(ref)
            if memory is None:
                raise HypervisorError(errno.EINVAL, f"grant ref {ref} was not granted here")
            ending.setdefault(memory, set()).add(ref)
        for memory, ended in ending.items():
            if ended != set(memory.granted):
                raise HypervisorError(
                    errno.EINVAL, "gntalloc ends a memory's grant for all its pages together"
                )
        for ref in refs:
            self._loopback.pop(ref, None)
        deferred = []
        for memory in ending:
            # An exported handle holds the gntalloc descriptor, and with it the grant.
            if memory.exported:
                deferred += memory.granted
            memory.rebase(create_memfd(memory.pages, "pvdisplay-guest"), 0)
            self._forget_grant(memory)
        return deferred

    def map(self, domid: int, refs: Sequence[int], writable: bool = True) -> SharedMapping:
        return self.map_then(domid, refs, writable, None)

    def map_then(
        self, domid: int, refs: Sequence[int], writable: bool, then: Callable[[], None] | None
    ) -> SharedMapping:
        """`map()`, calling `then()` once the mapping is closed (or collected)."""
        if not refs:
            raise HypervisorError(errno.EINVAL, "no grant refs to map")
        if self.is_loopback(domid, refs):
            fds, segments = self.loopback_layout(refs, writable)
            return SharedMapping(fds, segments, writable, on_close=then)
        if domid >= DOMID_FIRST_RESERVED:
            raise HypervisorError(errno.EINVAL, f"domain {domid} is reserved")
        index = self.map_refs(self._gntdev, domid, refs)
        release = _Unmap(self, index, len(refs), then)
        try:
            segment = Segment(0, index // PAGE_SIZE, len(refs))
            mapping = SharedMapping([self._gntdev], [segment], writable, on_close=release)
        except BaseException:
            self.unmap(index, len(refs))
            raise
        release.watch(mapping)
        return mapping

    def is_loopback(self, domid: int, refs: Sequence[int]) -> bool:
        """Whether `refs` name loopback grants; refs below the range are real grants, ours
        included (gntalloc can grant to its own domain, and gntdev maps those)."""
        return domid == self._domid and refs[0] >= LOOPBACK_REF_BASE

    def map_refs(self, gntdev: int, domid: int, refs: Sequence[int]) -> int:
        """MAP_GRANT_REF on `gntdev`: the mmap offset of the refs, not yet mapped anywhere."""
        request = abi.map_grant_ref_request(domid, refs)
        self._call(gntdev, abi.IOCTL_GNTDEV_MAP_GRANT_REF, request)
        return abi.map_grant_ref_index(request)

    def unmap(self, index: int, count: int) -> None:
        """UNMAP_GRANT_REF on the table's gntdev; the grant goes once nothing maps it."""
        if self._gntdev >= 0:
            request = abi.unmap_grant_ref_request(index, count)
            self._call(self._gntdev, abi.IOCTL_GNTDEV_UNMAP_GRANT_REF, request)

    @_locked
    def loopback_layout(
        self, refs: Sequence[int], writable: bool
    ) -> tuple[list[int], list[Segment]]:
        """The descriptors and page runs behind loopback refs, in ref order."""
        fds: list[int] = []
        segments: list[Segment] = []
        for ref in refs:
            entry = self._loopback.get(ref)
            if entry is None:
                raise HypervisorError(errno.EINVAL, f"grant ref {ref} is not ours to map")
            if writable and entry.readonly:
                raise HypervisorError(errno.EACCES, f"grant ref {ref} is read-only")
            fd, first_page = entry.memory.backing()
            if fd not in fds:
                fds.append(fd)
            page = first_page + entry.page
            last = segments[-1] if segments else None
            if (
                last is not None
                and fds[last.object_index] == fd
                and last.first_page + last.pages == page
            ):
                segments[-1] = Segment(last.object_index, last.first_page, last.pages + 1)
            else:
                segments.append(Segment(fds.index(fd), page, 1))
        return fds, segments

    @_locked
    def loopback_memory(self, refs: Sequence[int]) -> set[XenGuestMemory]:
        return {self._loopback[ref].memory for ref in refs if ref in self._loopback}

    @_locked
    def forget(self, memory: XenGuestMemory) -> None:
        """Drop every grant of memory being closed (its gntalloc descriptor goes with it)."""
        self._forget_grant(memory)
        for ref in [ref for ref, entry in self._loopback.items() if entry.memory is memory]:
            del self._loopback[ref]

    def close(self) -> None:
        if self._gntdev >= 0:
            os.close(self._gntdev)
            self._gntdev = -1

    def _alloc_gref(self, domid: int, pages: int, readonly: bool) -> tuple[int, int, list[int]]:
        if domid >= DOMID_FIRST_RESERVED:
            raise HypervisorError(errno.EINVAL, f"domain {domid} is reserved")
        if pages < 1:
            raise HypervisorError(errno.EINVAL, "zero-page allocation")
        fd = self._open_gntalloc()
        try:
            request = abi.alloc_gref_request(domid, pages, writable=not readonly)
            self._call(fd, abi.IOCTL_GNTALLOC_ALLOC_GREF, request)
        except BaseException:
            os.close(fd)
            raise
        index, refs = abi.alloc_gref_reply(request)
        return fd, index // PAGE_SIZE, refs

    def _granted(self, memory: XenGuestMemory, refs: list[int]) -> None:
        memory.granted = refs
        for ref in refs:
            self._foreign[ref] = memory

    def _forget_grant(self, memory: XenGuestMemory) -> None:
        for ref in memory.granted:
            self._foreign.pop(ref, None)
        memory.granted = []


def _close_all(*groups: list[int]) -> None:
    for fds in groups:
        for fd in fds:
            os.close(fd)
        fds.clear()


def _hung_up(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
