"""The guest domain the input tests drive: a vdispl display and a vkbd keyboard, both real.

`guest(hv, control, xenstore_dir, *options)` opens the guest's display (so the backend
publishes its connector) and its keyboard (asking for raw pointer positions if `options`
has "raw"), then answers commands on `control`:
("read", n) -> the next n events as tuples; ("poke", offset, value) writes a u32 into
its own shared page and notifies the backend (a misbehaving guest); ("info",) -> what
the keyboard negotiated; ("connections",) -> how many handshakes it completed.
`host_guest` is the same guest as an `EmulatedHost.start_guest` entry.
"""

import asyncio
import struct
from multiprocessing.connection import Connection
from typing import Any

from guest_commands import READ_PATIENCE, Command, read_events, serve
from pvdisplay.display.front import Display
from pvdisplay.hv import Hypervisor
from pvdisplay.input.front import Keyboard


def guest(hv: Hypervisor, control: Connection, xenstore_dir: str, *options: str) -> None:
    socket = f"{xenstore_dir}/domain/{hv.domid}"
    asyncio.run(_guest(hv, control, socket, raw_pointer="raw" in options))


def host_guest(hv: Hypervisor, control: Connection, xenstore_socket: str, name: str) -> None:
    asyncio.run(_guest(hv, control, xenstore_socket))


async def _guest(
    hv: Hypervisor, control: Connection, socket: str, raw_pointer: bool = False
) -> None:
    keyboard_open = Keyboard.open(hv, socket, raw_pointer=raw_pointer)
    async with await Display.open(hv, socket), await keyboard_open as keyboard:

        async def answer(command: Command) -> Any:
            return await _answer(hv, keyboard, command)

        await serve(control, answer)


async def _answer(hv: Hypervisor, keyboard: Keyboard, command: Command) -> Any:
    match command:
        case ("read", int(count)):
            return await read_events(keyboard, count)
        case ("poke", int(offset), int(value)):
            struct.pack_into("<I", keyboard.page, offset, value)
            assert keyboard.port is not None
            hv.events.notify(keyboard.port)
            return None
        case ("connections",):
            await asyncio.wait_for(keyboard.wait_connected(), READ_PATIENCE)
            return keyboard.connections
        case ("info",):
            return {
                "unique_id": keyboard.unique_id,
                "width": keyboard.width,
                "height": keyboard.height,
                "abs_pointer": keyboard.abs_pointer,
                "raw_pointer": keyboard.raw_pointer,
                "multi_touch": keyboard.multi_touch,
                "mt": (keyboard.mt_width, keyboard.mt_height, keyboard.mt_contacts),
            }
    raise ValueError(f"unknown command {command!r}")
