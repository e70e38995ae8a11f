"""`pvdisplay.hv.Buffers` without gntdev dma-buf: handles over gntdev (and gntalloc) descriptors.

Debian's kernel is built without CONFIG_XEN_GNTDEV_DMABUF, and a gntdev dma-buf could
not be mapped by an output's CPU anyway. A handle is therefore a `SharedBuffer` of
`pvdisplay.ipc` whose memory object is a Xen character device: a receiving process
maps it with a plain `mmap(fd, length, offset)`, knowing nothing of Xen.

gntdev lets each grant mapping be mmapped once at a time (a second mmap of a live
mapping fails with EAGAIN), so a handle exported from another domain's refs is a
recipe rather than one mapping: every `map()` and every `send()` makes a mapping of
its own (MAP_GRANT_REF), on a gntdev descriptor opened for the receiver alone when it
is sent, which is released when the receiver closes it. The export itself maps the refs
once right away, which checks them (gntdev only asks Xen at mmap time) and holds them
while the exporter keeps the handle, so the frontend ending its grant meanwhile does
not pull the pages from under a receiver that has yet to map them.

A handle exported from this domain's own memory (loopback refs, see `grants`) carries
the memory's own descriptor: a sealed memfd, or the allocation's gntalloc descriptor,
which any number of processes may map.

Every handle carries a lease, the write end of a pipe, as `SharedBuffer` does: copies
and mappings hold it, and `wait_released` waits for the read end to hang up.
"""

import errno
import os
import select
import socket
from collections.abc import Callable, Sequence

from pvdisplay.hv import PAGE_SIZE, BufferHandle, HypervisorError, ImportedBuffer
from pvdisplay.hv.xen.device import open_device
from pvdisplay.hv.xen.grants import XenGrantTable
from pvdisplay.ipc.buffers import SharedBuffer, new_handle_id
from pvdisplay.ipc.memory import Segment, SharedMapping


class XenBuffer:
    """Implements `pvdisplay.hv.BufferHandle` for refs another domain granted."""

    def __init__(
        self,
        table: XenGrantTable,
        open_gntdev: Callable[[], int],
        domid: int,
        refs: Sequence[int],
        *,
        readonly: bool,
        lease: int,
    ) -> None:
        """Map `refs` once to check and hold them; takes ownership of `lease`."""
        self._table = table
        self._open_gntdev = open_gntdev
        self._domid = domid
        self._refs = list(refs)
        self._readonly = readonly
        self._lease = lease
        self._id = new_handle_id()
        try:
            self._held: SharedMapping | None = table.map(domid, refs, writable=not readonly)
        except BaseException:
            os.close(lease)
            raise

    @property
    def id(self) -> str:
        return self._id

    @property
    def pages(self) -> int:
        return len(self._refs)

    @property
    def readonly(self) -> bool:
        return self._readonly

    def map(self, writable: bool = False) -> SharedMapping:
        """A mapping of its own; it keeps the handle unreleased until closed."""
        self._check_open()
        if writable and self._readonly:
            raise HypervisorError(errno.EACCES, f"buffer {self._id} is read-only")
        lease = os.dup(self._lease)
        try:
            return self._table.map_then(self._domid, self._refs, writable, lambda: os.close(lease))
        except BaseException:
            os.close(lease)
            raise

    def send(self, sock: socket.socket) -> None:
        """Pass the receiver a gntdev descriptor holding one unmapped mapping of the refs."""
        self._check_open()
        gntdev = self._open_gntdev()
        try:
            index = self._table.map_refs(gntdev, self._domid, self._refs)
            segment = Segment(0, index // PAGE_SIZE, len(self._refs))
        except BaseException:
            os.close(gntdev)
            raise
        copy = SharedBuffer(self._id, [gntdev], [segment], self._readonly, os.dup(self._lease))
        try:
            copy.send(sock)
        finally:
            copy.close()

    def close(self) -> None:
        """Drop the exporter's copy; receivers' copies and mappings stay valid."""
        if self._held is None:
            return
        held, self._held = self._held, None
        held.close()
        os.close(self._lease)

    def _check_open(self) -> None:
        if self._held is None:
            raise HypervisorError(errno.EBADF, f"buffer {self._id} is closed")

    def __repr__(self) -> str:
        return f"XenBuffer(id={self._id}, domid={self._domid}, pages={self.pages})"


class XenBuffers:
    """Implements `pvdisplay.hv.Buffers`."""

    def __init__(
        self,
        domid: int,
        table: XenGrantTable,
        open_gntdev: Callable[[], int] = lambda: open_device("gntdev"),
    ) -> None:
        self._domid = domid
        self._table = table
        self._open_gntdev = open_gntdev
        self._leases: dict[str, int] = {}

    def export_from_refs(
        self, domid: int, refs: Sequence[int], writable: bool = True
    ) -> BufferHandle:
        if not refs:
            raise HypervisorError(errno.EINVAL, "no grant refs to export")
        self._forget_released()
        watch, lease = os.pipe2(os.O_CLOEXEC)
        try:
            handle: XenBuffer | SharedBuffer
            if self._table.is_loopback(domid, refs):
                handle = self._export_own(refs, writable, watch, lease)
            else:
                handle = XenBuffer(
                    self._table, self._open_gntdev, domid, refs, readonly=not writable, lease=lease
                )
        except BaseException:
            os.close(watch)
            raise
        self._leases[handle.id] = watch
        return handle

    def wait_released(self, handle_id: str, timeout: float) -> None:
        watch = self._leases.get(handle_id)
        if watch is None:
            return
        poller = select.poll()
        poller.register(watch, select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000))):
            raise HypervisorError(errno.ETIMEDOUT, f"buffer {handle_id} is still held")
        del self._leases[handle_id]
        os.close(watch)

    def import_to_refs(
        self, handle: BufferHandle, domid: int, readonly: bool = False
    ) -> ImportedBuffer:
        # Granting pages that already exist takes IMP_TO_REFS on a dma-buf; gntalloc
        # only grants pages it allocates itself.
        raise HypervisorError(
            errno.EOPNOTSUPP, "granting a local buffer needs CONFIG_XEN_GNTDEV_DMABUF"
        )

    def release(self, import_id: str) -> list[int]:
        raise HypervisorError(errno.ENOENT, f"no import {import_id} (imports are unsupported)")

    def close(self) -> None:
        for watch in self._leases.values():
            os.close(watch)
        self._leases.clear()

    def _export_own(
        self, refs: Sequence[int], writable: bool, watch: int, lease: int
    ) -> SharedBuffer:
        try:
            fds, segments = self._table.loopback_layout(refs, writable)
            for memory in self._table.loopback_memory(refs):
                memory.watch_export(os.dup(watch))
        except BaseException:
            os.close(lease)
            raise
        # The handle owns copies: the memory may be closed while its export lives on.
        return SharedBuffer(
            new_handle_id(), [os.dup(fd) for fd in fds], segments, not writable, lease
        )

    def _forget_released(self) -> None:
        """Drop watches of exports nobody waited for, once they are released."""
        for handle_id, watch in list(self._leases.items()):
            poller = select.poll()
            poller.register(watch, select.POLLIN)
            if poller.poll(0):
                del self._leases[handle_id]
                os.close(watch)
