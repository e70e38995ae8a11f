"""Sending and receiving framed messages with descriptors on SEQPACKET unix sockets."""

import array
import errno
import os
import resource
import socket
from collections.abc import Mapping, Sequence

from pvdisplay.ipc.framing import FDS_PER_RECORD, RECV_BYTES, Assembler, FramedMessage, encode
from pvdisplay.wire.errors import ProtocolError

_ANCILLARY = socket.CMSG_SPACE(FDS_PER_RECORD * 4 + 16)


class DescriptorsLostError(OSError):
    """A record arrived whose descriptors this process had no room for (EMFILE); the
    record itself is whole and consumed, in `record`, for the receiver to undo what it
    stood for."""

    def __init__(self, record: bytes) -> None:
        super().__init__(errno.EMFILE, "descriptors dropped: this process's table is full")
        self.record = record


def rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    """Ancillary data passing `fds` (SCM_RIGHTS), or nothing."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def send_message(sock: socket.socket, body: Mapping[str, object], fds: Sequence[int] = ()) -> None:
    """Send one message on a blocking socket; `fds` stay open (the peer gets copies)."""
    for record, record_fds in encode(body, fds):
        sock.sendmsg([record], rights(record_fds))


def recv_record(sock: socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """One SEQPACKET record and the descriptors it carried; EOFError at end of stream."""
    data, ancillary, msg_flags, _ = sock.recvmsg(
        RECV_BYTES, _ANCILLARY, socket.MSG_CMSG_CLOEXEC | flags
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds.extend(received)
    if msg_flags & socket.MSG_TRUNC:
        close_all(fds)
        raise ProtocolError(errno.EMSGSIZE, "record was truncated")
    if msg_flags & socket.MSG_CTRUNC:
        # The ancillary buffer fits more than SCM_MAX_FD, so the kernel dropped
        # descriptors because this process could not take them: our limit, not the
        # peer's fault. The record itself is whole and consumed.
        close_all(fds)
        raise DescriptorsLostError(data)
    if not data:
        close_all(fds)
        raise EOFError("peer closed the socket")
    return data, fds


def receive_message(sock: socket.socket, assembler: Assembler | None = None) -> FramedMessage:
    """Block until one whole message has arrived."""
    assembler = assembler if assembler is not None else Assembler()
    try:
        while True:
            message = assembler.feed(*recv_record(sock))
            if message is not None:
                return message
    except BaseException:
        close_all(assembler.fds)
        assembler.fds.clear()
        raise


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.

    Every long-lived process calls this at start: a server that answers many peers should
    meet its own budgets (which it counts) long before the kernel's table, whose EMFILE
    would hit every peer at once.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
