"""The guest domain the input tests drive: a vdispl display and a vkbd keyboard, both real.

`guest(hv, control, xenstore_dir)` opens the guest's display (so the backend publishes
its connector) and its keyboard, then answers commands on `control`:
("read", n) -> the next n events as tuples; ("poke", offset, value) writes a u32 into
its own shared page and notifies the backend (a misbehaving guest); ("info",) -> what
the keyboard negotiated; ("connections",) -> how many handshakes it completed.
`host_guest` is the same guest as an `EmulatedHost.start_guest` entry.
"""

import asyncio
import dataclasses
import struct
from multiprocessing.connection import Connection
from typing import Any

from pvdisplay.display.front import Display
from pvdisplay.hv import Hypervisor
from pvdisplay.input.front import Keyboard
from pvdisplay.wire import kbdif

READ_PATIENCE = 30.0


def describe(event: kbdif.InEvent) -> tuple[Any, ...]:
    return (type(event).__name__, *dataclasses.astuple(event))


def guest(hv: Hypervisor, control: Connection, xenstore_dir: str) -> None:
    asyncio.run(_guest(hv, control, f"{xenstore_dir}/domain/{hv.domid}"))


def host_guest(hv: Hypervisor, control: Connection, xenstore_socket: str, name: str) -> None:
    asyncio.run(_guest(hv, control, xenstore_socket))


async def _guest(hv: Hypervisor, control: Connection, socket: str) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()

    def on_control() -> None:
        try:
            commands.put_nowait(control.recv())
        except (EOFError, OSError):
            commands.put_nowait(None)

    loop.add_reader(control.fileno(), on_control)
    async with await Display.open(hv, socket), await Keyboard.open(hv, socket) as keyboard:
        control.send(("ready", None))
        while (command := await commands.get()) is not None:
            try:
                control.send(("ok", await _answer(hv, keyboard, command)))
            except Exception as exc:
                control.send(("error", f"{type(exc).__name__}: {exc}"))


async def _answer(hv: Hypervisor, keyboard: Keyboard, command: tuple[Any, ...]) -> Any:
    match command:
        case ("read", int(count)):
            events: list[tuple[Any, ...]] = []
            while len(events) < count:
                batch = await asyncio.wait_for(keyboard.read(), READ_PATIENCE)
                events += [describe(event) for event in batch]
            return events
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
                "multi_touch": keyboard.multi_touch,
                "mt": (keyboard.mt_width, keyboard.mt_height, keyboard.mt_contacts),
            }
    raise ValueError(f"unknown command {command!r}")
