"""The plane registry and its socket server (buffers are covered by the backend tests)."""

import asyncio
import dataclasses
import errno
import functools
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import pytest

import rigs
from pvdisplay.ipc import framing
from pvdisplay.ipc.interfaces import Mapping
from pvdisplay.ipc.sockets import receive_message, send_message
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.model import Plane, PlaneInfo, PlaneKey, PlaneRegistry
from pvdisplay.planes.protocol import PlaneChange
from pvdisplay.planes.server import PlaneServer
from pvdisplay.wire.errors import ProtocolError

BLANK = PlaneInfo(1, 0, 0, "id0", 640, 480)
BURST = 20


def test_registry_notifies_until_unsubscribed() -> None:
    registry = PlaneRegistry()
    seen: list[tuple[int, bool]] = []
    unsubscribe = registry.subscribe(lambda info, removed: seen.append((info.frame, removed)))
    registry.publish(BLANK, None)
    registry.publish(PlaneInfo(1, 0, 0, "id0", 640, 480, frame=1), None)
    registry.remove(PlaneKey(1, 0, 0))
    registry.remove(PlaneKey(1, 0, 0))  # already gone: no notification
    unsubscribe()
    registry.publish(BLANK, None)
    assert seen == [(0, False), (1, False), (1, True)]
    assert [p.info for p in registry.planes()] == [BLANK]


def test_a_presented_plane_reads_as_its_description_at_the_frame_given() -> None:
    registry = PlaneRegistry()
    seen: list[PlaneInfo] = []
    registry.subscribe(lambda info, removed: seen.append(info))
    described = Plane(PlaneInfo(1, 0, 0, "id0", 640, 480, fb_cookie=9, frame=1), None)
    registry.publish(described.info, None)
    registry.present(described.info.key, described, 5, 2.5)
    expected = dataclasses.replace(described.info, frame=5, presented_at=2.5)
    assert registry.get(described.info.key) == Plane(expected, None)
    assert registry.planes() == [Plane(expected, None)]
    registry.remove(described.info.key)
    assert seen == [described.info, expected, expected]
    assert registry.get(described.info.key) is None


def test_plane_info_json_round_trip_and_rejection() -> None:
    info = PlaneInfo(3, 1, 2, "u", 800, 600, 9, "XR24", 800, 600, 3200, 0, 0, 0, "ab", 5, 1.5)
    assert PlaneInfo.from_json(info.to_json()) == info
    with pytest.raises(ProtocolError):
        PlaneInfo.from_json({**info.to_json(), "width": "800"})
    with pytest.raises(ProtocolError):
        PlaneInfo.from_json({**info.to_json(), "frame": True})


def test_the_shown_size_is_the_picture_set_or_the_mode_while_blank() -> None:
    assert BLANK.shown_size == (640, 480)
    shown = dataclasses.replace(BLANK, fb_cookie=9, fourcc="RG16", width=200, height=150)
    assert shown.shown_size == (200, 150)


@pytest.fixture
def served() -> Iterator[tuple[PlaneRegistry, Path, asyncio.AbstractEventLoop]]:
    registry = PlaneRegistry()
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "planes"
    loop = asyncio.new_event_loop()
    server = PlaneServer(registry, path)

    async def start() -> None:
        server.start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield registry, path, loop
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, function: Callable[..., None], *args: object) -> None:
    async def call() -> None:
        function(*args)

    asyncio.run_coroutine_threadsafe(call(), loop).result(10)


def test_server_lists_gets_and_streams_changes(
    served: tuple[PlaneRegistry, Path, asyncio.AbstractEventLoop],
) -> None:
    registry, path, loop = served
    on_loop(loop, registry.publish, BLANK, None)
    with PlaneClient(path) as client, PlaneClient(path) as watcher:
        changes = watcher.watch()
        assert client.list() == [BLANK]
        assert client.get(1, 0) == (BLANK, None)
        with pytest.raises(OSError) as missing:
            client.get(2, 0)
        assert missing.value.errno == errno.ENOENT
        with pytest.raises(FileNotFoundError):
            client.snapshot(1, 0)  # connected but blank
        updated = PlaneInfo(1, 0, 0, "id0", 640, 480, frame=7)
        on_loop(loop, registry.publish, updated, None)
        on_loop(loop, registry.remove, updated.key)
        first, second = next(changes), next(changes)
        assert (first.plane, first.removed) == (updated, False)
        assert (second.plane, second.removed) == (updated, True)
    # The server stopped listening when its last watcher left; a new one is heard again.
    with PlaneClient(path) as watcher:
        changes = watcher.watch()
        on_loop(loop, registry.publish, BLANK, None)
        change = next(changes)
        assert (change.plane, change.removed) == (BLANK, False)


def test_requests_it_cannot_serve_get_an_errno_and_the_client_is_still_served(
    served: tuple[PlaneRegistry, Path, asyncio.AbstractEventLoop],
) -> None:
    registry, path, loop = served
    on_loop(loop, registry.publish, BLANK, None)
    connector_9 = {"domid": 9, "devid": 0, "connector": 0}
    requests: list[tuple[framing.JsonObject, int]] = [
        ({"op": "dance"}, errno.EINVAL),
        ({"op": "get", "domid": "one", "devid": 0, "connector": 0}, errno.EINVAL),
        ({"op": "get", **connector_9}, errno.ENOENT),
        ({"op": "copy", "domid": -1, "devid": 0, "connector": 0}, errno.EINVAL),
        ({"op": "copy", **BLANK.key._asdict()}, errno.ENOENT),  # blank: shows nothing
        ({"op": "input", **connector_9, "events": []}, errno.ENOENT),  # no input devices
        ({"op": "input", **connector_9, "events": "none"}, errno.EINVAL),
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
        client.settimeout(rigs.PATIENCE)
        client.connect(str(path))
        for request, code in requests:
            send_message(client, request)
            assert receive_message(client).body["error"] == code, request
        send_message(client, {"op": "list"})
        assert receive_message(client).body == {"planes": [BLANK.to_json()]}


class UnmappableBuffer:
    """A buffer the backend can no longer map, as gntdev refuses a grant its guest revoked."""

    id = "revoked"
    pages = 1
    readonly = True

    def map(self, writable: bool = False) -> Mapping:
        raise OSError(errno.EFAULT, "Bad address")

    def send(self, sock: socket.socket) -> None:
        raise AssertionError("not asked for here")

    def close(self) -> None:
        pass


def test_a_frame_that_cannot_be_copied_is_an_errno_and_the_client_is_still_served(
    served: tuple[PlaneRegistry, Path, asyncio.AbstractEventLoop],
) -> None:
    registry, path, loop = served
    shown = dataclasses.replace(
        BLANK, fb_cookie=5, fourcc="XR24", width=16, height=16, stride=64, buffer_id="revoked"
    )
    on_loop(loop, registry.publish, shown, UnmappableBuffer())
    with PlaneClient(path) as client:
        with pytest.raises(OSError) as failed:
            client.snapshot(1, 0)
        assert failed.value.errno == errno.EFAULT
        assert client.list() == [shown]


def test_changes_published_on_another_thread_reach_watchers_in_order(
    served: tuple[PlaneRegistry, Path, asyncio.AbstractEventLoop],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The display backend publishes from its ring thread while the loop serves the socket:
    # watchers come and go meanwhile, and the one that stays sees every frame in order.
    registry, path, loop = served
    frames = 300
    seen: list[PlaneChange] = []
    with PlaneClient(path) as watcher:
        changes = watcher.watch()
        reader = threading.Thread(target=lambda: seen.extend(islice(changes, frames + 1)))
        reader.start()

        def caught_up(frame: int) -> bool:
            return len(seen) >= frame

        def publish() -> None:
            for frame in range(1, frames + 1):
                registry.publish(PlaneInfo(1, 0, 0, "id0", 640, 480, frame=frame), None)
                if frame % BURST == 0:
                    # A watcher whose socket fills is dropped: let this one catch up.
                    rigs.wait_until(functools.partial(caught_up, frame), "the watcher")

        publisher = threading.Thread(target=publish)
        publisher.start()
        while publisher.is_alive():
            with PlaneClient(path) as passer_by:
                passer_by.watch()
        publisher.join()
        on_loop(loop, registry.remove, BLANK.key)
        reader.join(30)
    assert [change.plane.frame for change in seen[:-1]] == list(range(1, frames + 1))
    assert seen[-1].removed
    assert "plane listener failed" not in caplog.text
