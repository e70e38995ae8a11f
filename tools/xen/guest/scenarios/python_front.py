"""pvdisplay's own frontends in a PV domU, over hv.xen (gntalloc, evtchn, /dev/xen/xenbus).

Run by the `python-front` guest script. It opens vdispl device 0 with
`pvdisplay.display.front`, times PG_FLIP round trips (request to response and
EVT_PG_FLIP) between two framebuffers of connector 0, then shows `guests.pattern`'s
picture (seed PATTERN_SEED) for dom0 to snapshot, and reports every event that
`pvdisplay.input.front` receives on vkbd device 0. Lines for the host start with
"@@GUEST"; dom0 destroys the domain when it is done.
"""

import asyncio
import statistics
import time

from pvdisplay.display import front
from pvdisplay.display.front import Display
from pvdisplay.guests import pattern
from pvdisplay.hv import xen
from pvdisplay.input.front import Keyboard
from pvdisplay.store.transport import xenstore_path
from pvdisplay.wire import fourcc

PATTERN_SEED = 7
# Linux's 3 s (the frontend's default) is for real hardware: under TCG on a busy host this
# guest stalls for seconds at a time (its kernel logs "Long readout interval" from the
# clocksource watchdog), and an answer that arrives during a stall is seen after its timer.
front.REQUEST_TIMEOUT = front.FLIP_TIMEOUT = 30.0
WARMUP = 50
ROUND_TRIPS = 500


def say(text: str) -> None:
    print(f"@@GUEST {text}", flush=True)


async def main() -> None:
    hv = xen.open_hypervisor()
    path = xenstore_path()
    say(f"python front domid={hv.domid} xenstore={path}")
    display = await Display.open(hv, path, 0)
    connector = display.connectors[0]
    size = f"{connector.width}x{connector.height}"
    say(f"display connected version={display.version} connector={size}")
    # Two pictures to flip between, the first of which stays on screen for dom0's check.
    framebuffers = []
    for seed in (PATTERN_SEED, PATTERN_SEED + 1):
        fb = await display.create_framebuffer(connector.width, connector.height, fourcc.XRGB8888)
        pattern.draw(fb, seed)
        framebuffers.append(fb)
    await connector.set_config(framebuffers[0])
    samples = []
    began = time.monotonic()
    for flip in range(WARMUP + ROUND_TRIPS):
        start = time.perf_counter_ns()
        await connector.flip(framebuffers[flip % 2])
        samples.append(time.perf_counter_ns() - start)
    measured = samples[WARMUP:]
    p99 = statistics.quantiles(measured, n=100)[98]
    say(
        f"rtt flips={len(measured)} p50_us={statistics.median(measured) / 1000:.1f} "
        f"p99_us={p99 / 1000:.1f} seconds={time.monotonic() - began:.1f}"
    )
    await connector.flip(framebuffers[0])
    say(f"pattern shown seed={PATTERN_SEED}")
    keyboard = await Keyboard.open(hv, path, 0)
    say(f"keyboard connected width={keyboard.width} height={keyboard.height}")
    async with keyboard:
        async for batch in keyboard:
            for event in batch:
                say(f"input {event!r}")


asyncio.run(main())
