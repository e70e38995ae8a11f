"""The guest domain the VNC tests and benchmark drive: a real display and a real keyboard.

`guest(hv, control, xenstore_dir, format, seed)` opens its vdispl display and vkbd
keyboard, shows `front_pattern` on connector 0 and answers commands on `control`:

- ("read", n) -> the next n kbdif events as tuples;
- ("mode", width, height, format, seed) -> shows a new framebuffer (a mode change);
- ("animate", frames, region) -> flips `frames` frames at 60 Hz, each with its number
  in the top-left 64x64 tile (colour = number) and either every pixel changed ("full")
  or only that tile ("small"); returns the time.monotonic() of each flip.
"""

import asyncio
import contextlib
import dataclasses
import itertools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from pvdisplay import toolstack
from pvdisplay.display import front_pattern
from pvdisplay.display.front import Display, Framebuffer
from pvdisplay.host import apply_plan
from pvdisplay.hv import Hypervisor
from pvdisplay.hv.local.host import DomainProcess, Host
from pvdisplay.input import config
from pvdisplay.input.front import Keyboard
from pvdisplay.outputs.vnc.server import VncServer
from pvdisplay.planes import PlaneKey
from pvdisplay.store.client import Client
from pvdisplay.wire import fourcc, kbdif

READ_PATIENCE = 30.0
MARKER = 64
FRAME_PERIOD = 1 / 60


def describe(event: kbdif.InEvent) -> tuple[Any, ...]:
    return (type(event).__name__, *dataclasses.astuple(event))


def guest(
    hv: Hypervisor, control: Connection, xenstore_dir: str, format_name: str, seed: str
) -> None:
    asyncio.run(_guest(hv, control, f"{xenstore_dir}/domain/{hv.domid}", format_name, int(seed)))


async def _guest(
    hv: Hypervisor, control: Connection, socket: str, format_name: str, seed: int
) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()

    def on_control() -> None:
        try:
            commands.put_nowait(control.recv())
        except (EOFError, OSError):
            commands.put_nowait(None)

    loop.add_reader(control.fileno(), on_control)
    async with await Display.open(hv, socket) as display, await Keyboard.open(hv, socket) as kbd:
        shown = await front_pattern.show_pattern(display, fourcc.by_name(format_name), seed)
        control.send(("ready", None))
        while (command := await commands.get()) is not None:
            try:
                control.send(("ok", await _answer(display, kbd, shown, command)))
            except Exception as exc:
                control.send(("error", f"{type(exc).__name__}: {exc}"))


async def _answer(
    display: Display, keyboard: Keyboard, shown: list[Framebuffer], command: tuple[Any, ...]
) -> Any:
    connector = display.connectors[0]
    match command:
        case ("read", int(count)):
            events: list[tuple[Any, ...]] = []
            while len(events) < count:
                batch = await asyncio.wait_for(keyboard.read(), READ_PATIENCE)
                events += [describe(event) for event in batch]
            return events
        case ("mode", int(width), int(height), str(format_name), int(seed)):
            fb = await display.create_framebuffer(width, height, fourcc.by_name(format_name))
            front_pattern.draw(fb, seed)
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

BACKEND = 0
PATIENCE = 60.0  # hang protection only
ENTRY = "test_vnc_guest:guest"


@dataclasses.dataclass
class Guest:
    process: DomainProcess
    domid: int

    def __call__(self, *command: Any) -> Any:
        self.process.control.send(command)
        return receive(self.process)

    @property
    def key(self) -> PlaneKey:
        return PlaneKey(self.domid, 0, 0)


@dataclasses.dataclass
class World:
    host: Host
    xs: Client
    xenstore_dir: str
    planes_socket: str
    domids: Iterator[int]

    def add_guest(self, resolution: str, format_name: str = "XRGB8888", seed: int = 0) -> Guest:
        domid = next(self.domids)
        self.xs.introduce(domid, 0, 1)
        unique_id = f"vnc{domid}"
        width, height = (int(part) for part in resolution.split("x"))
        vdispl = toolstack.Vdispl(
            0, BACKEND, False, (toolstack.Connector(unique_id, width, height),)
        )
        vkb = config.parse_xl_vkb(
            f"backend=0,feature-abs-pointer=1,unique-id={unique_id}", 0, "vkb", {}, BACKEND
        )
        for plan in (
            toolstack.domain_nodes(domid, f"guest{domid}"),
            toolstack.vdispl_nodes(domid, vdispl),
            config.vkb_nodes(domid, vkb, [vdispl]),
        ):
            apply_plan(self.xs, plan)
        process = self.host.start_domain(
            ENTRY, self.xenstore_dir, format_name, str(seed), domid=domid
        )
        receive(process)
        return Guest(process, domid)


def receive(process: DomainProcess) -> Any:
    if not process.control.poll(PATIENCE):
        raise TimeoutError(f"domain {process.domid} sent nothing (exit {process.returncode})")
    status, value = process.control.recv()
    if status not in ("ok", "ready"):
        raise RuntimeError(value)
    return value


@contextlib.contextmanager
def world() -> Iterator[World]:
    """xenstored, the broker, the display backend (domain 0) and its planes socket."""
    workdir = tempfile.mkdtemp(prefix="pvvnc-", dir="/tmp")
    xenstore_dir = f"{workdir}/xs"
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pvdisplay.cli import main; main()",
            "--log-level",
            "warning",
            "xenstored",
            "--socket-dir",
            xenstore_dir,
        ]
    )
    try:
        deadline = time.monotonic() + PATIENCE
        while not Path(f"{xenstore_dir}/socket").exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("xenstored did not start")
            time.sleep(0.05)
        with Client(f"{xenstore_dir}/socket") as xs:

            def release(domid: int) -> None:
                if domid != BACKEND:
                    xs.release(domid)

            with Host(on_domain_released=release) as host:
                planes_socket = f"{workdir}/planes"
                host.start_domain(
                    "pvdisplay.display.service:run", xenstore_dir, planes_socket, domid=BACKEND
                )
                while not Path(planes_socket).exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError("the backend did not open its planes socket")
                    time.sleep(0.05)
                yield World(host, xs, xenstore_dir, planes_socket, itertools.count(1))
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(workdir, ignore_errors=True)


class ServerThread:
    """A `VncServer` on its own event loop thread, for synchronous tests and benchmarks."""

    def __init__(self, planes_socket: str, password: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = VncServer(planes_socket, port=0, password=password)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.server.start())

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(PATIENCE)

    def port(self, key: PlaneKey) -> int:
        port: int = self.call(self.server.wait_port(key))
        return port

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(PATIENCE)
        self.loop.close()
