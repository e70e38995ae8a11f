"""The guest domain the web viewer tests drive: a known picture and a real keyboard.

`guest(hv, control, xenstore_dir)` shows `front_pattern`'s XRGB8888 pattern (seed 0 plus
the connector index) on every connector of vdispl 0, opens vkbd 0, then answers
("read", n) on `control` with the next n kbdif events as tuples.
"""

import asyncio
import dataclasses
from multiprocessing.connection import Connection
from typing import Any

from pvdisplay.display.front import Display
from pvdisplay.display.front_pattern import show_pattern
from pvdisplay.hv import Hypervisor
from pvdisplay.input.front import Keyboard
from pvdisplay.wire import fourcc

READ_PATIENCE = 30.0


def guest(hv: Hypervisor, control: Connection, xenstore_dir: str) -> None:
    asyncio.run(_guest(hv, control, f"{xenstore_dir}/domain/{hv.domid}"))


async def _guest(hv: Hypervisor, control: Connection, socket: str) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()

    def on_control() -> None:
        try:
            commands.put_nowait(control.recv())
        except (EOFError, OSError):
            commands.put_nowait(None)

    loop.add_reader(control.fileno(), on_control)
    async with await Display.open(hv, socket) as display, await Keyboard.open(hv, socket) as kbd:
        await show_pattern(display, fourcc.XRGB8888, 0)
        control.send(("ready", None))
        while (command := await commands.get()) is not None:
            match command:
                case ("read", int(count)):
                    events: list[tuple[Any, ...]] = []
                    while len(events) < count:
                        batch = await asyncio.wait_for(kbd.read(), READ_PATIENCE)
                        events += [(type(e).__name__, *dataclasses.astuple(e)) for e in batch]
                    control.send(("ok", events))
                case _:
                    control.send(("error", f"unknown command {command!r}"))
