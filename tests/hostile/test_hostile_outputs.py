"""Attacks on the outputs from network clients: more clients than the limit, and clients
that ask for full updates and never read. The limit turns the rest away at once, each
client has one frame pending at most, and a viewer already watching keeps getting
frames."""

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import aiohttp
import pytest
from hostile_world import Hostile, world
from vnc_client import Watcher, rfb_client, update_request

from pvdisplay.outputs.vnc.server import VncServer
from pvdisplay.outputs.web.server import WebViewer
from pvdisplay.planes.model import PlaneKey
from rigs import PATIENCE, wait_until

pytestmark = pytest.mark.processes

LIMIT = 4
REQUESTS = 50
"""Full update requests each greedy VNC client sends, reading nothing."""


class LoopThread:
    """An event loop on a thread of its own, for an output under test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(PATIENCE)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(PATIENCE)
        self.loop.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    with world(tmp_path_factory.mktemp("hostile")) as running:
        yield running


# -- VNC --------------------------------------------------------------------------------


def test_vnc_turns_away_clients_past_its_limit_and_holds_one_frame_for_a_greedy_one(
    hostile: Hostile,
) -> None:
    key = PlaneKey(hostile.honest.domid, 0, 0)
    thread = LoopThread()
    server = VncServer(hostile.host.planes_socket, port=0, max_clients=LIMIT)
    thread.call(server.start())
    try:
        port = thread.call(server.wait_port(key))
        watcher = Watcher(port)
        watcher.wait_updates(10)
        greedy = []
        for _ in range(LIMIT - 1):
            sock, width, height = rfb_client(port)
            sock.sendall(update_request(False, width, height) * REQUESTS)
            greedy.append(sock)
        turned_away = []
        for _ in range(2 * LIMIT):
            sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
            turned_away.append(sock.recv(64))
            sock.close()
        assert turned_away == [b""] * (2 * LIMIT)  # closed before the version greeting
        # Each greedy client has at most one update waiting in the server, whatever it
        # asked for; the watcher is served on.
        frame = 4 + 12 + watcher.width * watcher.height * 4
        assert all(size <= frame for size in thread.call(_backlog(server)))
        watcher.wait_updates(10)
        for sock in greedy:
            sock.close()
        watcher.close()
        wait_until(lambda: thread.call(_clients(server)) == 0, "the sessions to end")
    finally:
        thread.call(server.close())
        thread.stop()


async def _backlog(server: VncServer) -> list[int]:
    return server.write_backlog()


async def _clients(server: VncServer) -> int:
    return server.clients


# -- web --------------------------------------------------------------------------------


def test_the_web_viewer_turns_away_sockets_past_its_limit_and_a_viewer_is_served_on(
    hostile: Hostile,
) -> None:
    key = PlaneKey(hostile.honest.domid, 0, 0)
    thread = LoopThread()
    viewer = WebViewer(hostile.host.planes_socket, port=0, max_clients=LIMIT)
    thread.call(viewer.start())
    try:
        frames, refused = thread.call(_web_attack(viewer, key))
        assert refused == 2 * LIMIT
        assert frames >= 10
    finally:
        thread.call(viewer.close())
        thread.stop()


async def _web_attack(viewer: WebViewer, key: PlaneKey) -> tuple[int, int]:
    """A viewer that acks every frame, LIMIT - 1 pages that never read, then 2 * LIMIT
    more sockets; the frames the viewer got meanwhile, and how many were refused."""
    url = f"ws://127.0.0.1:{viewer.port}/ws/view/{key.domid}/{key.devid}/{key.connector}"
    async with aiohttp.ClientSession() as client:
        honest = await client.ws_connect(url)
        greedy = [await client.ws_connect(url) for _ in range(LIMIT - 1)]
        refused = 0
        for _ in range(2 * LIMIT):
            try:
                await client.ws_connect(url)
            except aiohttp.WSServerHandshakeError as error:
                refused += error.status == 503
        frames = 0
        while frames < 10:
            message = await asyncio.wait_for(honest.receive(), PATIENCE)
            if message.type == aiohttp.WSMsgType.BINARY:
                frames += 1
                (length,) = struct.unpack_from("<I", message.data)
                header = json.loads(message.data[4 : 4 + length])
                await honest.send_str(json.dumps({"type": "ack", "seq": header["seq"]}))
        for socket_ in [honest, *greedy]:
            await socket_.close()
    return frames, refused
