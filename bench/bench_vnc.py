"""VNC server at 1080p: frames per second delivered and flip-to-client latency.

A real guest (tests/vnc_guest.py) flips 1920x1080 XRGB8888 frames at 60 Hz through
the real display backend; each frame carries its number in its top-left 64x64 tile.
A minimal RFB client here (ZRLE + CopyRect, one update request outstanding at a time,
as TigerVNC and vncdotool do) reads updates as fast as the server sends them and notes
when each frame number arrives. Two cases: every pixel new each frame ("full"), and
only the marker tile changing ("small").

Baselines measured in the same run, on the same 1080p frame: zlib level 1 of the raw
frame (the compression ZRLE builds on) and np.copyto of the frame (one memory pass).
"""

import socket
import statistics
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pvdisplay.outputs.vnc import rfb
from rigs import Guest
from vnc_guest import ServerThread, world

WIDTH, HEIGHT = 1920, 1080
FRAMES = 240  # four seconds at 60 Hz
PATIENCE = 60.0


class Client:
    """Just enough RFB 3.8 to count frames: None security, ZRLE and CopyRect."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
        self.stream = zlib.decompressobj()
        self._read(12)
        self.sock.sendall(b"RFB 003.008\n")
        count = self._read(1)[0]
        assert rfb.SECURITY_NONE in self._read(count)
        self.sock.sendall(bytes([rfb.SECURITY_NONE]))
        assert self._read(4) == bytes(4)
        self.sock.sendall(b"\x01")
        self.width, self.height = struct.unpack(">HH", self._read(4))
        self._read(16)
        self._read(struct.unpack(">I", self._read(4))[0])
        encodings = (rfb.ENCODING_ZRLE, rfb.ENCODING_COPYRECT)
        self.sock.sendall(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))

    def _read(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError("server closed")
            data += chunk
        return bytes(data)

    def request(self, incremental: bool) -> None:
        self.sock.sendall(struct.pack(">BBHHHH", 3, incremental, 0, 0, self.width, self.height))

    def update(self) -> tuple[int | None, int]:
        """Read one FramebufferUpdate: (frame number in the marker tile or None, bytes)."""
        kind, count = struct.unpack(">BxH", self._read(4))
        assert kind == 0
        marker, size = None, 4
        for _ in range(count):
            x, y, _w, _h, encoding = struct.unpack(">HHHHi", self._read(12))
            size += 12
            if encoding == rfb.ENCODING_COPYRECT:
                self._read(4)
                size += 4
                continue
            assert encoding == rfb.ENCODING_ZRLE
            (length,) = struct.unpack(">I", self._read(4))
            tiles = self.stream.decompress(self._read(length))
            size += 4 + length
            if (x, y) == (0, 0) and tiles[0] == 1:  # the marker tile is solid
                marker = int.from_bytes(tiles[1:4], "little")
        return marker, size

    def close(self) -> None:
        self.sock.close()


def run_case(server: ServerThread, guest: Guest, region: str) -> dict[str, float]:
    client = Client(server.port(guest.key))
    client.request(False)
    client.update()
    flips: list[float] = []
    animator_cpu: list[float] = []

    def animate() -> None:
        flips.extend(guest("animate", FRAMES, region))
        animator_cpu.append(time.thread_time())

    animator = threading.Thread(target=animate)
    arrived: dict[int, float] = {}
    sent_bytes = 0
    # The server's CPU: this process's, less the client's (this thread) and the animator's.
    process_before, client_before = time.process_time(), time.thread_time()
    animator.start()
    started = time.monotonic()
    while animator.is_alive() or FRAMES not in arrived:
        client.request(True)
        marker, size = client.update()
        sent_bytes += size
        if marker is not None:
            arrived.setdefault(marker, time.monotonic())
        if time.monotonic() - started > PATIENCE:
            break
    animator.join()
    client_cpu = time.thread_time() - client_before
    server_cpu = time.process_time() - process_before - client_cpu - sum(animator_cpu)
    client.close()
    latencies = [(arrived[n] - flips[n - 1]) * 1000 for n in arrived if 1 <= n <= len(flips)]
    duration = max(arrived.values()) - min(arrived.values())
    return {
        "fps": (len(arrived) - 1) / duration if duration > 0 else 0.0,
        "median_ms": statistics.median(latencies),
        "p95_ms": sorted(latencies)[int(len(latencies) * 0.95)],
        "kib_per_frame": sent_bytes / 1024 / max(len(arrived), 1),
        "guest_fps": (len(flips) - 1) / (flips[-1] - flips[0]),
        "server_ms_per_frame": server_cpu * 1000 / max(len(arrived), 1),
    }


def baselines() -> dict[str, float]:
    ramp = (np.arange(WIDTH, dtype=np.uint32)[None, :] + np.arange(HEIGHT)[:, None] * 3) & 0xFF
    frame = (ramp ^ 5) * np.uint32(0x010101)
    raw = frame.tobytes()
    target = np.empty_like(frame)
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        zlib.compress(raw, 1)
    zlib_fps = rounds / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(rounds):
        np.copyto(target, frame)
    copy_fps = rounds / (time.perf_counter() - start)
    return {"zlib1_fps": zlib_fps, "copyto_fps": copy_fps}


def main() -> None:
    with world() as emulated:
        guest = emulated.add_guest(f"{WIDTH}x{HEIGHT}", "XRGB8888")
        server = ServerThread(emulated.planes_socket)
        per_frame: dict[str, float] = {}
        try:
            for region in ("full", "small"):
                figures = run_case(server, guest, region)
                per_frame[region] = figures["server_ms_per_frame"]
                print(
                    f"vnc 1080p {region:5s}: {figures['fps']:6.1f} frames/s delivered"
                    f" (guest flips {figures['guest_fps']:.0f}/s),"
                    f" latency median {figures['median_ms']:6.1f} ms,"
                    f" p95 {figures['p95_ms']:6.1f} ms, {figures['kib_per_frame']:8.1f} KiB/frame,"
                    f" server CPU {figures['server_ms_per_frame']:6.2f} ms/frame"
                )
        finally:
            server.close()
    print(
        f"server CPU per frame, small / full: {per_frame['small']:.2f} / {per_frame['full']:.2f} ms"
        f" = {per_frame['small'] / per_frame['full']:.2f}"
    )
    base = baselines()
    print(
        f"baseline 1080p frame: zlib level 1 {base['zlib1_fps']:6.1f} frames/s,"
        f" np.copyto {base['copyto_fps']:7.1f} frames/s"
    )


if __name__ == "__main__":
    main()
