"""The guest domain the window tests drive: a known picture and a real keyboard.

`guest(hv, control, xenstore_dir)` shows `guests.pattern`'s XRGB8888 pattern (seed 0) on
connector 0 of vdispl 0, opens vkbd 0, then answers on `control`:

- ("read", n) -> the next n kbdif events as tuples;
- ("mode", width, height, format, seed) -> a new framebuffer of that size and format with
  that pattern, set (SET_CONFIG, the guest's mode change) and flipped.
"""

import asyncio
from multiprocessing.connection import Connection
from typing import Any

from guest_commands import Command, read_events, serve
from pvdisplay.display.front import Display
from pvdisplay.guests import pattern
from pvdisplay.hv import Hypervisor
from pvdisplay.input.front import Keyboard
from pvdisplay.wire import fourcc


def guest(hv: Hypervisor, control: Connection, xenstore_dir: str) -> None:
    asyncio.run(_guest(hv, control, f"{xenstore_dir}/domain/{hv.domid}"))


async def _guest(hv: Hypervisor, control: Connection, socket: str) -> None:
    async with await Display.open(hv, socket) as display, await Keyboard.open(hv, socket) as kbd:
        shown = await pattern.show_pattern(display, fourcc.XRGB8888, 0)

        async def answer(command: Command) -> Any:
            match command:
                case ("read", int(count)):
                    return await read_events(kbd, count)
                case ("mode", int(width), int(height), str(format_name), int(seed)):
                    connector = display.connectors[0]
                    fmt = fourcc.by_name(format_name)
                    fb = await display.create_framebuffer(width, height, fmt)
                    pattern.draw(fb, seed)
                    await connector.set_config(fb)
                    await connector.flip(fb)
                    shown.append(fb)
                    return None
            raise ValueError(f"unknown command {command!r}")

        await serve(control, answer)
