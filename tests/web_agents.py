"""The guest domain the web viewer tests drive: a known picture and a real keyboard.

`guest(hv, control, xenstore_dir)` shows `guests.pattern`'s XRGB8888 pattern (seed 0 plus
the connector index) on every connector of vdispl 0, opens vkbd 0, then answers
("read", n) on `control` with the next n kbdif events as tuples.
"""

import asyncio
from multiprocessing.connection import Connection
from typing import Any

from guest_commands import Command, read_events, serve
from pvdisplay.display.front import Display
from pvdisplay.guests.pattern import show_pattern
from pvdisplay.hv import Hypervisor
from pvdisplay.input.front import Keyboard
from pvdisplay.wire import fourcc


def guest(hv: Hypervisor, control: Connection, xenstore_dir: str) -> None:
    asyncio.run(_guest(hv, control, f"{xenstore_dir}/domain/{hv.domid}"))


async def _guest(hv: Hypervisor, control: Connection, socket: str) -> None:
    async with await Display.open(hv, socket) as display, await Keyboard.open(hv, socket) as kbd:
        await show_pattern(display, fourcc.XRGB8888, 0)

        async def answer(command: Command) -> Any:
            match command:
                case ("read", int(count)):
                    return await read_events(kbd, count)
            raise ValueError(f"unknown command {command!r}")

        await serve(control, answer)
