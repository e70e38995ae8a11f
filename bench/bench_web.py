"""Web viewer: frames per second delivered and glass-to-glass latency at 1080p, in Chromium.

A guest domain of the emulated host flips a 1920x1080 XRGB8888 connector at 60 Hz, either
animating the whole screen (the demo test card: scrolling stripes, a bouncing box, a
label) or changing one small region (a 64x64 box moving over a still picture). The web
viewer runs as its own process; Debian's Chromium (Playwright) shows the connector.
Latency is from the backend presenting the flip (`PlaneInfo.presented_at`, under a
millisecond after the guest's flip request) to the frame drawn on the page's canvas, on
one clock. CPU is per process (utime + stime from /proc) over the measured window, 100%
being one core; "whole machine" includes anything else running on the box.

Baseline measured in the same run: encoding one 1080p frame of the same picture alone
(simplejpeg JPEG from the guest's bytes, and the viewer's PNG), with no diff, capture,
socket or browser.
"""

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import rigs
from bench.cpu import cpu_seconds
from pvdisplay import toolstack
from pvdisplay.display.front import Display, Framebuffer
from pvdisplay.guests.demo import TestCard
from pvdisplay.hv import Hypervisor
from pvdisplay.outputs.web import tiles
from pvdisplay.toolstack.host import EmulatedHost
from pvdisplay.wire import fourcc

WIDTH, HEIGHT = 1920, 1080
RATE = 60
BOX = 64
WARMUP = 3.0
MEASURE = 8.0
GUEST_ENTRY = f"{__name__}:animator"
CONFIG = f"""
[[guest]]
name = "bench"
vdispl = ["backend=0,connectors=screen:{WIDTH}x{HEIGHT}"]
"""


# -- the guest --------------------------------------------------------------------------


def animator(
    hv: Hypervisor, control: Connection, xenstore_socket: str, name: str, mode: str
) -> None:
    """Domain entry: flip the connector at RATE Hz until killed ("full" or "small" change)."""

    async def session() -> None:
        display = await Display.open(hv, xenstore_socket)
        await display.wait_connected()
        connector = display.connectors[0]
        card = TestCard(connector.width, connector.height, name)
        framebuffers: list[Framebuffer] = []
        for _ in range(2):
            fb = await display.create_framebuffer(card.width, card.height, fourcc.XRGB8888)
            card.draw(0, fb.array())
            framebuffers.append(fb)
        still = framebuffers[0].array().copy()
        await connector.set_config(framebuffers[0])
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        for frame in range(1, 1 << 62):
            back = framebuffers[frame % 2]
            if mode == "full":
                card.draw(frame, back.array())
            else:
                _move_box(back.array(), still, frame)
            await connector.flip(back)
            deadline += 1 / RATE
            await asyncio.sleep(max(deadline - loop.time(), 0))

    asyncio.run(session())


def _box_at(frame: int) -> tuple[int, int]:
    return 200 + (frame * 7) % 1200, 300 + (frame * 3) % 500


def _move_box(pixels: np.ndarray, still: np.ndarray, frame: int) -> None:
    """Undo the box this buffer showed two frames ago, draw it where it is now."""
    x, y = _box_at(frame - 2)
    area = np.s_[y : y + BOX, x * 4 : (x + BOX) * 4]
    pixels[area] = still[area]
    x, y = _box_at(frame)
    pixels[y : y + BOX, x * 4 : (x + BOX) * 4] = 255


# -- measuring --------------------------------------------------------------------------


def chromium_pids() -> list[int]:
    """Every Chromium process on the machine (the bench's browser: renderer, GPU, ...)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if stat.read_text().split(" (", 1)[1].startswith("chrom"):
                pids.append(int(stat.parent.name))
    return pids


def busy_cpus() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def process_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def web_viewer(planes_socket: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pvdisplay",
            "web",
            "--planes-socket",
            str(planes_socket),
            "--listen",
            f"127.0.0.1:{port}",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("web viewer did not start")
            time.sleep(0.05)
        yield process, f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait()


def measure(pages: list[Any], pids: dict[str, int]) -> dict[str, Any]:
    for page in pages:
        page.evaluate("pvdisplay.latencies.length = 0; pvdisplay.decoding.length = 0")
    frames = [page.evaluate("pvdisplay.frames") for page in pages]
    groups = {name: [pid] for name, pid in pids.items()} | {"chromium": chromium_pids()}
    cpu = {name: process_cpu(group) for name, group in groups.items()}
    machine = busy_cpus()
    started = time.monotonic()
    time.sleep(MEASURE)
    elapsed = time.monotonic() - started
    cpu = {name: (process_cpu(group) - cpu[name]) / elapsed for name, group in groups.items()}
    busy, total = (now - before for now, before in zip(busy_cpus(), machine, strict=True))
    delivered = [
        (page.evaluate("pvdisplay.frames") - before) / elapsed
        for page, before in zip(pages, frames, strict=True)
    ]
    latencies = sorted(
        latency for page in pages for latency in page.evaluate("pvdisplay.latencies")
    )
    decoding = sorted(d for page in pages for d in page.evaluate("pvdisplay.decoding"))
    return {
        "fps": sum(delivered) / len(delivered),
        "page": decoding[len(decoding) // 2] * 1000 if decoding else float("nan"),
        "p50": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p95": latencies[int(len(latencies) * 0.95)] * 1000 if latencies else float("nan"),
        "cpu": cpu,
        "machine": busy / total * (os.cpu_count() or 1),
    }


def run_mode(mode: str, viewers: tuple[int, ...]) -> list[tuple[int, dict[str, Any]]]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (only the bench needs it)

    results = []
    with (
        tempfile.TemporaryDirectory(prefix="pvw-bench-", dir="/tmp") as run_dir,
        contextlib.ExitStack() as stack,
    ):
        host = EmulatedHost(toolstack.parse_config(CONFIG), Path(run_dir))
        stack.callback(host.stop)
        host.start(guests=False)
        guest = host.start_guest(host.config.guests[0], entry=GUEST_ENTRY, args=[mode])
        assert host.backend is not None
        with web_viewer(host.planes_socket) as (viewer, url), sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path=str(rigs.CHROMIUM), args=rigs.CHROMIUM_ARGS, headless=True
            )
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            pids = {
                "guest": guest.process.pid,
                "backend": host.backend.pid,
                "viewer": viewer.pid,
            }
            pages: list[Any] = []
            for count in viewers:
                while len(pages) < count:
                    page = context.new_page()
                    page.goto(f"{url}view/{guest.domid}/0/0")
                    page.wait_for_function(
                        "window.pvdisplay && pvdisplay.frames > 0", timeout=60_000
                    )
                    pages.append(page)
                time.sleep(WARMUP)
                results.append((count, measure(pages, pids)))
            browser.close()
    return results


def baseline(mode: str) -> tuple[float, float, int, int]:
    """Encoding one 1080p frame alone: (JPEG ms, PNG ms, JPEG bytes, PNG bytes)."""
    card = TestCard(WIDTH, HEIGHT, "bench")
    raw = np.zeros((HEIGHT, WIDTH * 4), np.uint8)
    card.draw(7, raw)
    if mode == "small":
        raw = raw[:BOX, : BOX * 4].copy()
    height, width = raw.shape[0], raw.shape[1] // 4
    rgb = fourcc.to_rgb(fourcc.XRGB8888, raw.reshape(-1), width, height, width * 4)

    def timed(encode: Callable[[], bytes]) -> tuple[float, int]:
        data = encode()
        started = time.perf_counter()
        for _ in range(10):
            encode()
        return (time.perf_counter() - started) / 10 * 1000, len(data)

    # JPEG straight from the guest's B, G, R, X bytes, as the viewer encodes motion.
    bgrx = raw.reshape(height, width, 4)
    jpeg_ms, jpeg_bytes = timed(lambda: tiles.encode_jpeg(bgrx, tiles.DEFAULT_QUALITY, "BGRX"))
    png_ms, png_bytes = timed(lambda: tiles.encode_png(rgb))
    return jpeg_ms, png_ms, jpeg_bytes, png_bytes


def main() -> None:
    print(f"web viewer at {WIDTH}x{HEIGHT}, guest flipping at {RATE} Hz, {os.cpu_count()} CPUs")
    per_frame: dict[str, float] = {}  # one viewer: the viewer's CPU ms per frame delivered
    for mode, label, viewers in (
        ("full", "full-screen animation", (1, 4)),
        ("small", f"{BOX}x{BOX} region changing", (1,)),
    ):
        jpeg_ms, png_ms, jpeg_bytes, png_bytes = baseline(mode)
        region = f"{WIDTH}x{HEIGHT}" if mode == "full" else f"{BOX}x{BOX}"
        print(f"-- {label}")
        print(
            f"   baseline, encoding one {region} frame alone: JPEG {jpeg_ms:6.2f} ms"
            f" ({jpeg_bytes / 1024:.0f} KiB), PNG {png_ms:6.2f} ms ({png_bytes / 1024:.0f} KiB)"
        )
        for count, result in run_mode(mode, viewers):
            cpu = "  ".join(f"{name} {share * 100:5.1f}%" for name, share in result["cpu"].items())
            print(
                f"   {count} viewer{'s' if count > 1 else ' '}: {result['fps']:5.1f} frames/s per"
                f" viewer, flip to canvas p50 {result['p50']:6.1f} ms p95 {result['p95']:6.1f} ms"
                f" (p50 {result['page']:5.1f} ms of it in the page)"
            )
            capacity = (os.cpu_count() or 1) * 100
            print(f"      CPU: {cpu}; whole machine {result['machine'] * 100:5.1f}% of {capacity}%")
            frame_ms = result["cpu"]["viewer"] * 1000 / max(result["fps"] * count, 1e-9)
            print(f"      viewer CPU per frame sent: {frame_ms:6.2f} ms")
            if count == 1:
                per_frame[mode] = frame_ms
    print(
        f"-- viewer CPU per frame, {BOX}x{BOX} change / full screen:"
        f" {per_frame['small']:.2f} / {per_frame['full']:.2f} ms"
        f" = {per_frame['small'] / per_frame['full']:.2f}"
    )
