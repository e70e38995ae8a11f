"""Attacks on vhost-user-gpu from a hostile front-end: guest memory that shrinks under the
back-end's mapping costs that front-end its connection, never the process its life."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from vhost_user_front import REPLY_PATIENCE, front_end

from guest_vm import wait_for_socket
from pvdisplay.planes.client import PlaneClient

pytestmark = pytest.mark.processes

PVDISPLAY = str(Path(sys.executable).parent / "pvdisplay")


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
