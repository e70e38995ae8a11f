"""A VNC client reduced to what the hostile tests and the bench need: RFB 3.8 with
security None, Raw updates, and a viewer that counts the updates it gets."""

import socket
import struct
import threading

from rigs import PATIENCE, wait_until


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def rfb_client(port: int) -> tuple[socket.socket, int, int]:
    """RFB 3.8 with security None, shared; returns the socket and the desktop size."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
    recv_exact(sock, 12)
    sock.sendall(b"RFB 003.008\n")
    (count,) = recv_exact(sock, 1)
    recv_exact(sock, count)
    sock.sendall(b"\x01")
    recv_exact(sock, 4)  # SecurityResult: OK
    sock.sendall(b"\x01")
    width, height = struct.unpack(">HH", recv_exact(sock, 4))
    recv_exact(sock, 16)  # pixel format
    (name_length,) = struct.unpack(">I", recv_exact(sock, 4))
    recv_exact(sock, name_length)
    return sock, width, height


def update_request(incremental: bool, width: int, height: int) -> bytes:
    return struct.pack(">BBHHHH", 3, incremental, 0, 0, width, height)


def read_update(sock: socket.socket) -> None:
    """One FramebufferUpdate in Raw (the default without SetEncodings), 32 bpp."""
    kind, _, rects = struct.unpack(">BBH", recv_exact(sock, 4))
    assert kind == 0
    for _ in range(rects):
        _, _, width, height, _ = struct.unpack(">HHHHi", recv_exact(sock, 12))
        recv_exact(sock, width * height * 4)


class Watcher:
    """An honest VNC viewer on a thread: asks for every change and counts the updates."""

    def __init__(self, port: int) -> None:
        self.sock, self.width, self.height = rfb_client(port)
        self.updates = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        incremental = False
        try:
            while True:
                self.sock.sendall(update_request(incremental, self.width, self.height))
                read_update(self.sock)
                self.updates += 1
                incremental = True
        except OSError:
            return

    def wait_updates(self, count: int) -> None:
        start = self.updates
        wait_until(lambda: self.updates >= start + count, f"{count} updates")

    def close(self) -> None:
        self.sock.close()
        self._thread.join(PATIENCE)
