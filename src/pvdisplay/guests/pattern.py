"""A guest that shows a known picture on every connector, for end-to-end checks.

The picture is defined in buffer bytes, not in colours, so it is exact in every format:
a snapshot of the connector must equal `expected_rgb` pixel for pixel.

    host.start_domain("pvdisplay.guests.pattern:run",
                      xenstore_socket, guest_name, "RGB565", "7", domid=N)
"""

import asyncio
import contextlib
from multiprocessing.connection import Connection

import numpy as np
import numpy.typing as npt

from pvdisplay.display import front
from pvdisplay.display.front import Display, Framebuffer
from pvdisplay.hv import Hypervisor
from pvdisplay.wire import fourcc
from pvdisplay.wire.fourcc import PixelFormat


def pattern(fmt: PixelFormat, width: int, height: int, seed: int) -> npt.NDArray[np.uint8]:
    """The (height, pitch) bytes the guest writes: diagonal bands plus seeded noise."""
    pitch = fmt.min_pitch(width)
    rows = np.arange(height, dtype=np.uint32)[:, None]
    columns = np.arange(pitch, dtype=np.uint32)[None, :]
    bands = (rows * 3 + columns * 5 + seed * 17) & 0xFF
    noise = np.random.default_rng(seed).integers(0, 32, size=(height, pitch), dtype=np.uint32)
    return ((bands ^ noise) & 0xFF).astype(np.uint8)


def expected_rgb(fmt: PixelFormat, width: int, height: int, seed: int) -> npt.NDArray[np.uint8]:
    """What a snapshot of the pattern converts to (HxWx3 RGB)."""
    raw = pattern(fmt, width, height, seed)
    return fourcc.to_rgb(fmt, raw.reshape(-1), width, height, fmt.min_pitch(width))


def draw(fb: Framebuffer, seed: int) -> None:
    fb.array()[:] = pattern(fb.format, fb.width, fb.height, seed)


async def show_pattern(display: Display, fmt: PixelFormat, seed: int) -> list[Framebuffer]:
    """Create, fill, configure and flip one framebuffer per connector."""
    framebuffers = []
    for connector in display.connectors:
        fb = await display.create_framebuffer(connector.width, connector.height, fmt)
        framebuffers.append(fb)
        draw(fb, seed + connector.index)
        await connector.set_config(fb)
        await connector.flip(fb)
    return framebuffers


def run(  # noqa: PLR0917 (a domain entry takes its arguments as DomainLauncher.start_domain passes them)
    hv: Hypervisor,
    control: Connection,
    xenstore_socket: str,
    guest_name: str,
    format_name: str = "XRGB8888",
    seed: str = "0",
    devid: str = "0",
) -> None:
    """Domain entry: show the pattern, report it on `control`, hold it until told to stop."""
    fmt = fourcc.by_name(format_name)

    async def session(display: Display) -> None:
        framebuffers = await show_pattern(display, fmt, int(seed))
        control.send(
            {
                "guest": guest_name,
                "connectors": [
                    {
                        "index": connector.index,
                        "unique_id": connector.unique_id,
                        "width": fb.width,
                        "height": fb.height,
                        "format": fmt.name,
                        "pitch": fb.pitch,
                        "fb_cookie": fb.fb_cookie,
                    }
                    for connector, fb in zip(display.connectors, framebuffers, strict=True)
                ],
            }
        )
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_stop, control)

    front.run(hv, xenstore_socket, session, int(devid))


def _wait_for_stop(control: Connection) -> None:
    with contextlib.suppress(EOFError):
        control.recv()
