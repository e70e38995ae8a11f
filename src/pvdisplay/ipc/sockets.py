"""Sending and receiving framed messages with descriptors on SEQPACKET unix sockets."""

import array
import errno
import os
import socket
from collections.abc import Mapping, Sequence

from pvdisplay.ipc.framing import FDS_PER_RECORD, RECV_BYTES, Assembler, FramedMessage, encode
from pvdisplay.wire.errors import ProtocolError

_ANCILLARY = socket.CMSG_SPACE(FDS_PER_RECORD * 4 + 16)


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
    if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        close_all(fds)
        raise ProtocolError(errno.EMSGSIZE, "record or its descriptors were truncated")
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
