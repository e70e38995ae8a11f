"""A guest that flips between two full-frame patterns as fast as it can.

`guest(hv, control, xenstore_dir)` double-buffers as a DRM client does: it draws the next
frame into the buffer not on screen, flips to it, and waits for the flip to complete
before drawing into the other. Frame n shows `PATTERNS[(n // 2) % 2]` from buffer n % 2,
so each buffer is redrawn with the other pattern every time it comes back: a copy of a
buffer taken while the guest redraws it is a mix of the two patterns. Commands on
`control`:

- ("flip",) -> starts flipping, returns None;
- ("stop",) -> stops, returns the number of frames flipped.
"""

import asyncio
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

from guest_commands import Command, serve
from pvdisplay.display.front import Connector, Display, Framebuffer
from pvdisplay.guests import pattern
from pvdisplay.hv import Hypervisor
from pvdisplay.wire import fourcc

ENTRY = "flipping_guest:guest"
FORMAT = fourcc.XRGB8888
SEEDS = (3, 4)


def guest(hv: Hypervisor, control: Connection, xenstore_dir: str) -> None:
    asyncio.run(_guest(hv, control, f"{xenstore_dir}/domain/{hv.domid}"))


async def _guest(hv: Hypervisor, control: Connection, socket: str) -> None:
    async with await Display.open(hv, socket) as display:
        connector = display.connectors[0]
        width, height = connector.width, connector.height
        patterns = [pattern.pattern(FORMAT, width, height, seed) for seed in SEEDS]
        buffers = [await display.create_framebuffer(width, height, FORMAT) for _ in range(2)]
        for fb in buffers:
            np.copyto(fb.array(), patterns[0])
        await connector.set_config(buffers[0])
        flips = [0]
        flipping: list[asyncio.Task[None]] = []

        async def answer(command: Command) -> Any:
            match command:
                case ("flip",):
                    flipping.append(asyncio.create_task(_flip(connector, buffers, patterns, flips)))
                    return None
                case ("stop",):
                    for task in flipping:
                        task.cancel()
                    await asyncio.gather(*flipping, return_exceptions=True)
                    return flips[0]
            raise ValueError(f"unknown command {command!r}")

        await serve(control, answer)


async def _flip(
    connector: Connector,
    buffers: list[Framebuffer],
    patterns: list[npt.NDArray[np.uint8]],
    flips: list[int],
) -> None:
    """Flip until cancelled, counting frames in `flips[0]`."""
    while True:
        frame = flips[0] = flips[0] + 1
        fb = buffers[frame % 2]
        np.copyto(fb.array(), patterns[(frame // 2) % 2])
        await connector.flip(fb)


def expected_pictures(width: int, height: int) -> list[npt.NDArray[np.uint8]]:
    """The two pictures a snapshot may show, as HxWx3 RGB."""
    return [pattern.expected_rgb(FORMAT, width, height, seed) for seed in SEEDS]
