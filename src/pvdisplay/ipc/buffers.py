"""Zero-copy buffer handles: memory objects, a page layout, a lease and an unguessable id.

A handle is the emulation's dma-buf. It holds the memfds its pages live in (or, on
real Xen, the gntdev or gntalloc character devices they are mapped from), the runs
of pages that make up the buffer, and, for handles exported from grant refs, a *lease*:
the write end of a pipe whose read end the broker (and the exporter) watch. Every copy
of the handle, in any process, and every mapping made from one, holds the lease open;
when the last is closed the read end reports POLLHUP, which is how the broker learns
that the buffer is released, wherever it travelled and however its holders died.
"""

import errno
import os
import re
import secrets
import socket
import stat
from collections.abc import Sequence

from pvdisplay.ipc import framing
from pvdisplay.ipc.memory import Segment, SharedMapping, create_memfd, sealed_pages
from pvdisplay.ipc.sockets import close_all, receive_message, send_message
from pvdisplay.wire.errors import HypervisorError, ProtocolError

_HANDLE_ID = re.compile(r"[0-9a-f]{32}")


def new_handle_id() -> str:
    """128 random bits: a name that crosses process boundaries and cannot be guessed."""
    return secrets.token_hex(16)


class SharedBuffer:
    """Implements `pvdisplay.hv.BufferHandle`; owns its descriptors until `close()`."""

    def __init__(
        self,
        handle_id: str,
        fds: Sequence[int],
        segments: Sequence[Segment],
        readonly: bool,
        lease: int | None,
    ) -> None:
        self._id = handle_id
        self._fds = list(fds)
        self._segments = list(segments)
        self._readonly = readonly
        self._lease = lease
        self._closed = False

    @classmethod
    def allocate(cls, pages: int) -> "SharedBuffer":
        """A fresh local buffer (for example an output's), not yet shared with anyone."""
        if pages < 1:
            raise HypervisorError(errno.EINVAL, "zero-page buffer")
        fd = create_memfd(pages, "pvdisplay-buffer")
        return cls(new_handle_id(), [fd], [Segment(0, 0, pages)], readonly=False, lease=None)

    @property
    def id(self) -> str:
        return self._id

    @property
    def pages(self) -> int:
        return sum(seg.pages for seg in self._segments)

    @property
    def descriptors(self) -> int:
        return len(self._fds) + (self._lease is not None)

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def fds(self) -> list[int]:
        """The memory objects, indexed by `Segment.object_index`."""
        self._check_open()
        return list(self._fds)

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def map(self, writable: bool = False) -> SharedMapping:
        """Map the buffer here; the mapping keeps the handle unreleased until closed."""
        self._check_open()
        if writable and self._readonly:
            raise HypervisorError(errno.EACCES, f"buffer {self._id} is read-only")
        lease = os.dup(self._lease) if self._lease is not None else None
        try:
            return SharedMapping(
                self._fds,
                self._segments,
                writable,
                on_close=(lambda: os.close(lease)) if lease is not None else None,
            )
        except BaseException:
            if lease is not None:
                os.close(lease)
            raise

    def send(self, sock: socket.socket) -> None:
        """Pass a copy of this handle to the process at the other end of `sock`."""
        self._check_open()
        lease = [self._lease] if self._lease is not None else []
        body = {
            "buffer": self._id,
            "readonly": self._readonly,
            "lease": bool(lease),
            "segments": [[s.object_index, s.first_page, s.pages] for s in self._segments],
        }
        send_message(sock, body, self._fds + lease)

    @classmethod
    def receive(cls, sock: socket.socket) -> "SharedBuffer":
        """Take a handle another process sent with `send()`."""
        return cls.from_message(receive_message(sock))

    @classmethod
    def from_message(cls, message: framing.FramedMessage) -> "SharedBuffer":
        """The handle a received `send()` message carries (for callers that receive
        messages themselves, e.g. from an event loop); its descriptors are closed when
        it is not one."""
        try:
            return cls._from_fields(message.body, message.fds)
        except BaseException:
            close_all(message.fds)
            raise

    @classmethod
    def _from_fields(cls, body: framing.JsonObject, fds: list[int]) -> "SharedBuffer":
        handle_id = framing.get_str(body, "buffer")
        if not _HANDLE_ID.fullmatch(handle_id):
            raise ProtocolError(errno.EINVAL, "buffer id is not 128 hex bits")
        readonly = framing.get_bool(body, "readonly")
        leased = framing.get_bool(body, "lease")
        triples = framing.get_triples(body, "segments", max_items=len(fds) + 70_000)
        objects = fds[:-1] if leased else fds
        segments = [Segment(*t) for t in triples]
        if not objects or not segments:
            raise ProtocolError(errno.EINVAL, "buffer without memory")
        try:
            # A character device (Xen's gntdev or gntalloc) has no size to check: mmap
            # refuses a range it does not hold, with no SIGBUS later, as a memfd that
            # could shrink would give.
            sizes = [None if _is_device(fd) else sealed_pages(fd) for fd in objects]
        except HypervisorError as exc:
            raise ProtocolError(errno.EINVAL, exc.strerror or "bad memory object") from None
        for seg in segments:
            if seg.object_index >= len(objects) or seg.pages < 1:
                raise ProtocolError(errno.EINVAL, f"bad segment {seg}")
            size = sizes[seg.object_index]
            if size is not None and seg.first_page + seg.pages > size:
                raise ProtocolError(errno.EINVAL, f"segment {seg} beyond its object")
        return cls(handle_id, objects, segments, readonly, fds[-1] if leased else None)

    def close(self) -> None:
        """Drop this copy. Mappings made from it stay valid until they are closed."""
        if self._closed:
            return
        self._closed = True
        close_all(self._fds)
        if self._lease is not None:
            os.close(self._lease)

    def _check_open(self) -> None:
        if self._closed:
            raise HypervisorError(errno.EBADF, f"buffer {self._id} is closed")

    def __repr__(self) -> str:
        return f"SharedBuffer(id={self._id}, pages={self.pages}, readonly={self._readonly})"


def _is_device(fd: int) -> bool:
    try:
        return stat.S_ISCHR(os.fstat(fd).st_mode)
    except OSError:
        return False
