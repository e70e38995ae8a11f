"""Attacks on vhost-user-gpu from a hostile front-end: guest memory that shrinks under the
back-end's mapping costs that front-end its connection, never the process its life."""

import array
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from guest_vm import wait_for_socket
from pvdisplay.planes.client import PlaneClient
from pvdisplay.virtio import vhost_user as vu

pytestmark = pytest.mark.processes

PVDISPLAY = str(Path(sys.executable).parent / "pvdisplay")
GUEST_BASE = 0x4000_0000
USER_BASE = 0x7F00_0000_0000
MEMORY_SIZE = 1 << 20
QUEUE_SIZE = 16
REPLY_PATIENCE = 30.0


@pytest.fixture
def gpu(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    listen, planes = tmp_path / "gpu.sock", tmp_path / "planes.sock"
    process = subprocess.Popen(
        [PVDISPLAY, "--log-level", "warning", "vhost-user-gpu",
         "--socket-path", str(listen), "--planes-socket", str(planes)],
    )  # fmt: skip
    try:
        wait_for_socket(planes, process)
        wait_for_socket(listen, process)
        yield process, listen, planes
    finally:
        process.terminate()
        process.wait(REPLY_PATIENCE)


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


def planes_served(planes: Path) -> bool:
    with PlaneClient(planes) as client:
        return client.list() == []


def test_guest_memory_that_shrinks_costs_the_front_end_its_connection_not_the_process(
    gpu: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    process, listen, planes = gpu

    # A memfd that can be sealed: the back-end sealed it, so it cannot be shrunk at all.
    sock, ram, kick = front_end(listen, sealing=True)
    with pytest.raises(PermissionError):
        os.ftruncate(ram, 0)
    close_all(sock, ram, kick)

    # One that cannot: it shrinks, and the next kick drops the front-end.
    sock, ram, kick = front_end(listen, sealing=False)
    os.ftruncate(ram, 0)
    os.eventfd_write(kick, 1)
    assert sock.recv(64) == b""  # dropped
    close_all(sock, ram, kick)

    # The process lives on: its planes socket answers, and the next front-end is served.
    assert process.poll() is None
    assert planes_served(planes)
    close_all(*front_end(listen, sealing=False))
    assert process.poll() is None


def close_all(sock: socket.socket, *fds: int) -> None:
    sock.close()
    for fd in fds:
        os.close(fd)
