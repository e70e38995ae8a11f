"""The asyncio planes client against a real `PlaneServer` on a real socket."""

import asyncio
import dataclasses
import errno
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.planes.aio import AsyncPlaneClient
from pvdisplay.planes.input_events import Key
from pvdisplay.planes.model import PlaneInfo, PlaneKey, PlaneRegistry
from pvdisplay.planes.protocol import PlaneChange
from pvdisplay.planes.server import PlaneServer

KEY = PlaneKey(1, 0, 0)
BLANK = PlaneInfo(1, 0, 0, "id0", 640, 480)


def serving(test: Callable[[PlaneRegistry, Path], Awaitable[None]]) -> None:
    """Run `test` on a loop that also serves a fresh registry's planes socket."""

    async def main() -> None:
        registry = PlaneRegistry()
        path = Path(tempfile.mkdtemp(dir="/tmp")) / "planes"
        server = PlaneServer(registry, path)
        server.start()
        try:
            await asyncio.wait_for(test(registry, path), 10)
        finally:
            server.close()

    asyncio.run(main())


def test_get_hands_over_the_buffer_mapped_without_copying() -> None:
    async def test(registry: PlaneRegistry, path: Path) -> None:
        buffer = SharedBuffer.allocate(2)
        with buffer.map(writable=True) as mapping:
            mapping.array()[:8] = np.arange(1, 9, dtype=np.uint8)
        shown = dataclasses.replace(BLANK, fb_cookie=7, buffer_id=buffer.id, frame=3)
        registry.publish(shown, buffer)
        registry.publish(PlaneInfo(1, 0, 1, "id1", 800, 600), None)
        async with await AsyncPlaneClient.connect(path) as client:
            assert [p.key for p in await client.list()] == [KEY, PlaneKey(1, 0, 1)]
            info, handle = await client.get(KEY)
            assert info == shown and handle is not None and handle.id == buffer.id
            with handle.map() as mapping:
                assert mapping.array()[:8].tolist() == list(range(1, 9))
            handle.close()
            blank = PlaneInfo(1, 0, 1, "id1", 800, 600)
            assert await client.get(PlaneKey(1, 0, 1)) == (blank, None)
            with pytest.raises(OSError) as missing:
                await client.get(PlaneKey(9, 0, 0))
            assert missing.value.errno == errno.ENOENT
            with pytest.raises(OSError) as no_input:  # this server routes no input
                await client.send_input(KEY, [Key(30, True)])
            assert no_input.value.errno == errno.ENOENT
        buffer.close()

    serving(test)


def test_concurrent_requests_on_one_client_get_their_own_replies() -> None:
    async def test(registry: PlaneRegistry, path: Path) -> None:
        for connector in range(4):
            registry.publish(PlaneInfo(1, 0, connector, f"id{connector}", 640, 480), None)
        async with await AsyncPlaneClient.connect(path) as client:
            gets = await asyncio.gather(*(client.get(PlaneKey(1, 0, c)) for c in range(4)))
            listed = await client.list()
        assert [info.connector for info, _ in gets] == [0, 1, 2, 3]
        assert len(listed) == 4

    serving(test)


def test_watch_reports_every_change_in_order_until_the_server_goes() -> None:
    async def test(registry: PlaneRegistry, path: Path) -> None:
        registry.publish(BLANK, None)
        watcher = await AsyncPlaneClient.connect(path)
        changes = await watcher.watch()  # registered: nothing published after is missed
        for frame in range(1, 31):
            registry.publish(dataclasses.replace(BLANK, frame=frame), None)
        registry.remove(KEY)
        seen = [await anext(changes) for _ in range(31)]
        assert seen[:-1] == [
            PlaneChange(dataclasses.replace(BLANK, frame=f), False) for f in range(1, 31)
        ]
        assert seen[-1] == PlaneChange(dataclasses.replace(BLANK, frame=30), True)
        watcher.close()

    serving(test)


def test_a_watch_ends_with_eof_when_the_server_closes() -> None:
    async def main() -> None:
        path = Path(tempfile.mkdtemp(dir="/tmp")) / "planes"
        server = PlaneServer(PlaneRegistry(), path)
        server.start()
        async with await AsyncPlaneClient.connect(path) as watcher:
            changes = await watcher.watch()
            server.close()
            with pytest.raises(EOFError):
                await asyncio.wait_for(anext(changes), 10)

    asyncio.run(main())
