"""The command loop of the guest domains that end-to-end tests drive (`rigs.Guest`).

A guest agent opens its devices, then runs `serve(control, answer)`: it sends
("ready", None), then answers each command with ("ok", result) or
("error", "Type: message") until the test closes `control`. `read_events` is the
("read", n) command every agent with a keyboard answers.
"""

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from pvdisplay.input.front import Keyboard

READ_PATIENCE = 30.0

Command = tuple[Any, ...]


async def serve(control: Connection, answer: Callable[[Command], Awaitable[Any]]) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Command | None] = asyncio.Queue()

    def on_control() -> None:
        try:
            commands.put_nowait(control.recv())
        except (EOFError, OSError):
            commands.put_nowait(None)

    loop.add_reader(control.fileno(), on_control)
    try:
        control.send(("ready", None))
        while (command := await commands.get()) is not None:
            try:
                control.send(("ok", await answer(command)))
            except Exception as exc:
                control.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        loop.remove_reader(control.fileno())


async def read_events(keyboard: Keyboard, count: int) -> list[tuple[Any, ...]]:
    """At least `count` kbdif events (a batch is never split), each as (type name, *fields)."""
    events: list[tuple[Any, ...]] = []
    while len(events) < count:
        batch = await asyncio.wait_for(keyboard.read(), READ_PATIENCE)
        events += [(type(event).__name__, *dataclasses.astuple(event)) for event in batch]
    return events
