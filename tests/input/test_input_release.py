"""Held input is let go of when a viewer goes away or loses focus.

A web page or VNC client that disconnects while holding a key, a button or a finger
cannot send the release itself; the server sends it, or the guest keeps it held. The
real guest's kbdif must see every release after the viewer is gone:

- web: a page on the viewer's WebSocket holds a key, a button and a touch, then closes
  the socket (and, in the other test, sends the page's "release" message instead);
- VNC: vncdotool (RFB 3.8) presses a key and a button and exits.
"""

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import rigs
from pvdisplay.outputs.web.browser_input import BrowserInput
from pvdisplay.outputs.web.server import BackgroundViewer
from pvdisplay.planes.input_events import Key, TouchUp
from vnc_guest import ServerThread

pytestmark = pytest.mark.processes

BTN_LEFT = 0x110
KEY_A = 30
VKB = "backend=0,feature-abs-pointer=1,feature-multi-touch=1"
VNCDO = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vncdo"

HOLD = {
    "type": "input",
    "events": [
        {"t": "key", "code": "KeyA", "down": True},
        {"t": "button", "button": 0, "down": True, "x": 5, "y": 6},
        {"t": "touch", "phase": "down", "id": 7, "x": 10, "y": 20},
    ],
}
HELD = [
    ("Key", True, KEY_A),
    ("Position", 5, 6, 0),
    ("Key", True, BTN_LEFT),
    ("MtDown", 0, 10, 20),
    ("MtSyn", 0),
]
LET_GO = [("Key", False, KEY_A), ("Key", False, BTN_LEFT), ("MtUp", 0), ("MtSyn", 0)]


@pytest.fixture(scope="module")
def world() -> Iterator[rigs.Rig]:
    with rigs.backend_world(rigs.Rig) as running:
        yield running


def add_guest(world: rigs.Rig) -> rigs.Guest:
    return world.start_guest("web_agents:guest", vkb=VKB, resolution="320x240")


def read(guest: rigs.Guest, expected: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What the guest reads up to the last event of `expected`."""
    return guest.read_until(expected[-1])


async def live_page(url: str, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    """A page's socket once the viewer says the connector is live (input counts then)."""
    ws = await session.ws_connect(url)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT and json.loads(message.data)["state"] == "live":
            return ws
    raise AssertionError("the viewer closed the socket before the connector was live")


async def holding_page(
    viewer: BackgroundViewer, guest: rigs.Guest, session: aiohttp.ClientSession
) -> aiohttp.ClientWebSocketResponse:
    """A live page that holds HELD, once the guest has read it."""
    ws = await live_page(f"{viewer.url}ws/view/{guest.domid}/0/0", session)
    await ws.send_json(HOLD)
    assert await asyncio.to_thread(read, guest, HELD) == HELD
    return ws


@contextlib.contextmanager
def viewed_guest(world: rigs.Rig) -> Iterator[tuple[rigs.Guest, BackgroundViewer]]:
    """A new guest and a web viewer of the world, both gone afterwards."""
    guest = add_guest(world)
    viewer = BackgroundViewer(world.planes_socket, port=0)
    try:
        yield guest, viewer
    finally:
        viewer.close()
        guest.process.kill()


def test_a_page_that_goes_away_releases_what_it_held(world: rigs.Rig) -> None:
    async def page(guest: rigs.Guest, viewer: BackgroundViewer) -> None:
        async with aiohttp.ClientSession() as session:
            ws = await holding_page(viewer, guest, session)
            await ws.close()

    with viewed_guest(world) as (guest, viewer):
        asyncio.run(page(guest, viewer))
        assert read(guest, LET_GO) == LET_GO


def test_a_page_that_loses_focus_releases_what_it_held(world: rigs.Rig) -> None:
    async def page(guest: rigs.Guest, viewer: BackgroundViewer) -> None:
        async with aiohttp.ClientSession() as session:
            ws = await holding_page(viewer, guest, session)
            await ws.send_json({"type": "input", "events": [{"t": "release"}]})
            assert await asyncio.to_thread(read, guest, LET_GO) == LET_GO
            # Released means forgotten: going away lifts only what was pressed since.
            press = {"t": "key", "code": "KeyA", "down": True}
            await ws.send_json({"type": "input", "events": [press]})
            assert await asyncio.to_thread(read, guest, [("Key", True, KEY_A)]) == [
                ("Key", True, KEY_A)
            ]
            await ws.close()

    with viewed_guest(world) as (guest, viewer):
        asyncio.run(page(guest, viewer))
        assert read(guest, [("Key", False, KEY_A)]) == [("Key", False, KEY_A)]


def test_a_vnc_client_that_goes_away_releases_what_it_held(world: rigs.Rig) -> None:
    guest = add_guest(world)
    server = ServerThread(world.planes_socket)
    try:
        address = f"127.0.0.1::{server.port(guest.key)}"
        result = subprocess.run(
            [str(VNCDO), "-s", address, "move", "10", "20", "mousedown", "1", "keydown", "a"],
            capture_output=True,
            text=True,
            timeout=rigs.PATIENCE,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        expected = [
            ("Position", 10, 20, 0),
            ("Key", True, BTN_LEFT),
            ("Key", True, KEY_A),
            ("Key", False, KEY_A),
            ("Key", False, BTN_LEFT),
        ]
        assert read(guest, expected) == expected
    finally:
        server.close()
        guest.process.kill()


def test_page_input_remembers_only_what_is_still_held() -> None:
    page = BrowserInput(320, 240)
    page.decode(HOLD)
    page.decode(
        {
            "type": "input",
            "events": [
                {"t": "button", "button": 0, "down": False, "x": 5, "y": 6},
                {"t": "touch", "phase": "down", "id": 8, "x": 1, "y": 1},
            ],
        }
    )
    assert page.release_all() == [Key(KEY_A, False), TouchUp(0), TouchUp(1)]
    assert page.release_all() == []
