"""A vhost-user front-end reduced to what the hostile tests and the bench need: connect,
hand over guest RAM in a memfd, start the control ring, as QEMU does."""

import array
import os
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

from pvdisplay.virtio import vhost_user as vu

GUEST_BASE = 0x4000_0000
USER_BASE = 0x7F00_0000_0000
MEMORY_SIZE = 1 << 20
QUEUE_SIZE = 16
REPLY_PATIENCE = 60.0  # hang protection only, as rigs.PATIENCE


def send(sock: socket.socket, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
    data = vu.VhostUserMessage(request, vu.VERSION, payload, []).encode()
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def front_end(listen: Path, sealing: bool) -> tuple[socket.socket, int, int]:
    """Connect, hand over 1 MiB of guest RAM and start the control ring, as QEMU does;
    returns the socket, the RAM's memfd (sealable or not) and the ring's kick eventfd."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(listen))
    sock.settimeout(REPLY_PATIENCE)
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing else 0)
    ram = os.memfd_create("hostile-ram", flags)
    os.ftruncate(ram, MEMORY_SIZE)
    send(sock, vu.SET_FEATURES, struct.pack("<Q", 1 << vu.VIRTIO_F_VERSION_1))
    region = struct.pack("<QQQQ", GUEST_BASE, MEMORY_SIZE, USER_BASE, 0)
    send(sock, vu.SET_MEM_TABLE, struct.pack("<II", 1, 0) + region, [ram])
    send(sock, vu.SET_VRING_NUM, struct.pack("<II", 0, QUEUE_SIZE))
    send(sock, vu.SET_VRING_BASE, struct.pack("<II", 0, 0))
    addresses = (USER_BASE, USER_BASE + 0x2000, USER_BASE + 0x1000)  # desc, used, avail
    send(sock, vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, *addresses, 0))
    kick, call = os.eventfd(0), os.eventfd(0)
    send(sock, vu.SET_VRING_CALL, struct.pack("<Q", 0), [call])
    send(sock, vu.SET_VRING_KICK, struct.pack("<Q", 0), [kick])
    send(sock, vu.SET_VRING_ENABLE, struct.pack("<II", 0, 1))
    os.close(call)
    # A request with a reply: the back-end has taken everything before it.
    send(sock, vu.GET_FEATURES)
    assert len(sock.recv(vu.HEADER.size + 8)) == vu.HEADER.size + 8
    return sock, ram, kick
