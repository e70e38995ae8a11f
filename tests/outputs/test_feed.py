"""The outputs' `PlaneFeed` against a real `PlaneServer` on a real socket."""

import asyncio
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.outputs.feed.mirror import CanonicalMirror, GuestMirror
from pvdisplay.outputs.feed.plane_feed import PlaneFeed
from pvdisplay.planes.input_events import InputEvent, InputReceipt, Key
from pvdisplay.planes.model import PlaneInfo, PlaneKey, PlaneRegistry
from pvdisplay.planes.server import PlaneServer
from pvdisplay.wire import fourcc

KEY = PlaneKey(1, 0, 0)
WIDTH, HEIGHT, STRIDE = 100, 70, 416  # rows padded past the 400 bytes of pixels


async def until(condition: Callable[[], object], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def shown_plane(buffer: SharedBuffer, frame: int) -> PlaneInfo:
    return PlaneInfo(
        *KEY, "id0", WIDTH, HEIGHT, fb_cookie=5, fourcc="XR24", width=WIDTH, height=HEIGHT,
        stride=STRIDE, offset=4096, buffer_id=buffer.id, frame=frame,
    )  # fmt: skip


def test_the_feed_captures_follows_forwards_input_and_reconnects() -> None:
    received: list[tuple[PlaneKey, list[InputEvent]]] = []

    def on_input(key: PlaneKey, events: Sequence[InputEvent]) -> InputReceipt:
        received.append((key, list(events)))
        return InputReceipt(len(events), 0)

    async def main() -> None:
        path = Path(tempfile.mkdtemp(dir="/tmp")) / "planes"
        registry = PlaneRegistry()
        server = PlaneServer(registry, path, on_input)
        buffer = SharedBuffer.allocate(2 + STRIDE * HEIGHT // 4096)
        guest = np.random.default_rng(1).integers(0, 256, STRIDE * HEIGHT, dtype=np.uint8)
        with buffer.map(writable=True) as mapping:
            mapping.array()[4096 : 4096 + guest.size] = guest
        registry.publish(shown_plane(buffer, 1), buffer)
        server.start()
        feed = PlaneFeed(path, GuestMirror)
        heard: list[PlaneKey | None] = []
        feed.subscribe(heard.append)
        feed.start()
        try:
            await until(lambda: KEY in feed.planes, "the plane")
            assert feed.connected and heard[:2] == [KEY, None]
            capture = await feed.capture(KEY)
            assert capture is not None and capture.info.frame == 1
            rows = guest.reshape(HEIGHT, STRIDE)[:, : WIDTH * 4]
            kept = capture.snapshot.mirror.data.reshape(HEIGHT, STRIDE)[:, : WIDTH * 4]
            assert np.array_equal(kept, rows)
            assert await feed.capture(KEY) == capture  # the same frame: the same capture

            version = feed.version(KEY)
            registry.publish(shown_plane(buffer, 2), buffer)
            await asyncio.wait_for(feed.wait_change(KEY, version), 5)
            assert feed.planes[KEY].frame == 2

            await feed.send_input(KEY, [Key(30, True), Key(30, False)])
            assert received == [(KEY, [Key(30, True), Key(30, False)])]

            # The backend goes: the feed forgets every plane and says so; when a backend
            # listens there again, the feed is back without being asked.
            server.close()
            await until(lambda: not feed.connected, "the backend gone")
            assert feed.planes == {} and heard[-1] is None
            registry = PlaneRegistry()
            registry.publish(shown_plane(buffer, 7), buffer)
            server = PlaneServer(registry, path, on_input)
            server.start()
            await until(lambda: feed.connected and KEY in feed.planes, "the backend back")
            assert feed.planes[KEY].frame == 7
            again = await feed.capture(KEY)
            assert again is not None and again.info.frame == 7
        finally:
            await feed.close()
            server.close()
            buffer.close()

    asyncio.run(main())


def test_a_canonical_mirror_reads_the_guest_as_0x00rrggbb() -> None:
    fmt = fourcc.XRGB8888
    guest = np.random.default_rng(2).integers(0, 256, STRIDE * HEIGHT, dtype=np.uint8)
    mirror = CanonicalMirror(fmt, WIDTH, HEIGHT, STRIDE)
    mirror.update(guest)
    words = guest.reshape(HEIGHT, STRIDE)[:, : WIDTH * 4].copy().view("<u4")
    assert np.array_equal(mirror.frame, words & 0xFFFFFF)
    guest[STRIDE * 65 + 4 * 70 + 3] ^= 0xFF  # only the X byte: the picture is the same
    assert not mirror.update(guest).any()
    guest[STRIDE * 65 + 4 * 70] ^= 0xFF  # tile row 1, tile column 1
    assert np.argwhere(mirror.update(guest)).tolist() == [[1, 1]]
