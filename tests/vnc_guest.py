"""The guest domain the VNC tests and benchmark drive: a real display and a real keyboard.

`guest(hv, control, xenstore_dir, format, seed)` opens its vdispl display and vkbd
keyboard, shows `guests.pattern` on connector 0 and answers commands on `control`:

- ("read", n) -> the next n kbdif events as tuples;
- ("mode", width, height, format, seed) -> shows a new framebuffer (a mode change);
- ("animate", frames, region) -> flips `frames` frames at 60 Hz, each with its number
  in the top-left 64x64 tile (colour = number) and either every pixel changed ("full")
  or only that tile ("small"); returns the time.monotonic() of each flip.
"""

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

import rigs
from guest_commands import Command, read_events, serve
from pvdisplay.display.front import Display, Framebuffer
from pvdisplay.guests import pattern
from pvdisplay.hv import Hypervisor
from pvdisplay.input.front import Keyboard
from pvdisplay.outputs.vnc.server import VncServer
from pvdisplay.planes.model import PlaneKey
from pvdisplay.wire import fourcc

MARKER = 64
FRAME_PERIOD = 1 / 60


def guest(
    hv: Hypervisor, control: Connection, xenstore_dir: str, format_name: str, seed: str
) -> None:
    asyncio.run(_guest(hv, control, f"{xenstore_dir}/domain/{hv.domid}", format_name, int(seed)))


async def _guest(
    hv: Hypervisor, control: Connection, socket: str, format_name: str, seed: int
) -> None:
    async with await Display.open(hv, socket) as display, await Keyboard.open(hv, socket) as kbd:
        shown = await pattern.show_pattern(display, fourcc.by_name(format_name), seed)

        async def answer(command: Command) -> Any:
            return await _answer(display, kbd, shown, command)

        await serve(control, answer)


async def _answer(
    display: Display, keyboard: Keyboard, shown: list[Framebuffer], command: Command
) -> Any:
    connector = display.connectors[0]
    match command:
        case ("read", int(count)):
            return await read_events(keyboard, count)
        case ("mode", int(width), int(height), str(format_name), int(seed)):
            fb = await display.create_framebuffer(width, height, fourcc.by_name(format_name))
            pattern.draw(fb, seed)
            await connector.set_config(fb)
            await connector.flip(fb)
            shown.append(fb)
            return None
        case ("animate", int(frames), str(region)):
            return await _animate(display, frames, region == "full")
    raise ValueError(f"unknown command {command!r}")


async def _animate(display: Display, frames: int, full: bool) -> list[float]:
    connector = display.connectors[0]
    width, height = connector.width, connector.height
    buffers = [await display.create_framebuffer(width, height, fourcc.XRGB8888) for _ in range(2)]
    columns, rows = np.arange(width, dtype=np.uint32), np.arange(height, dtype=np.uint32)
    ramp = (columns[None, :] + rows[:, None] * 3) & 0xFF
    for fb in buffers:
        fb.array()[:] = 0
    await connector.set_config(buffers[0])
    flipped = []
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    for number in range(1, frames + 1):
        deadline += FRAME_PERIOD
        await asyncio.sleep(max(deadline - loop.time(), 0))
        pixels = buffers[number % 2].array()[:, : width * 4].view("<u4")
        if full:
            np.copyto(pixels, ((ramp ^ number) & 0xFF) * np.uint32(0x010101))  # not a move
        pixels[:MARKER, :MARKER] = number
        flipped.append(loop.time())
        await connector.flip(buffers[number % 2])
    return flipped


# -- the world around it (used by the tests and bench/bench_vnc.py) -----------------------

ENTRY = "vnc_guest:guest"


class World(rigs.Rig):
    def add_guest(
        self, resolution: str, format_name: str = "XRGB8888", seed: int = 0
    ) -> rigs.Guest:
        vkb = "backend=0,feature-abs-pointer=1"
        return self.start_guest(ENTRY, format_name, str(seed), vkb=vkb, resolution=resolution)


def world() -> contextlib.AbstractContextManager[World]:
    """xenstored, the broker, the display backend (domain 0) and its planes socket."""
    return rigs.backend_world(World)


class ServerThread:
    """A `VncServer` on its own event loop thread, for synchronous tests and benchmarks."""

    def __init__(self, planes_socket: str, password: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = VncServer(planes_socket, port=0, password=password)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.server.start())

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(rigs.PATIENCE)

    def port(self, key: PlaneKey) -> int:
        port: int = self.call(self.server.wait_port(key))
        return port

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(rigs.PATIENCE)
        self.loop.close()
