"""PV input end to end with real processes: xenstored, broker, backend domain, guest domains.

Each guest runs the real display frontend (so its connector is published) and the real
input frontend (`Keyboard`); the test plays an output and sends events with
`PlaneClient.send_input`, then asks the guest what arrived on its ring.
"""

from collections.abc import Iterator
from typing import Any

import pytest

import rigs
from pvdisplay import xenbus
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.input_events import Key, PointerMove, TouchDown, TouchMove, TouchUp, Wheel
from pvdisplay.planes.model import PlaneKey
from pvdisplay.wire import kbdif
from rigs import BACKEND, PATIENCE

pytestmark = pytest.mark.processes

BTN_LEFT = 0x110
KEY_A = 30


class World(rigs.Rig):
    def add_guest(self, vkb: str, resolution: str = "640x480", *options: str) -> rigs.Guest:
        return self.start_guest("input_agents:guest", *options, vkb=vkb, resolution=resolution)

    def send(self, guest: rigs.Guest, *events: Any) -> Any:
        with PlaneClient(self.planes_socket) as client:
            return client.send_input(guest.key, list(events))

    def input_status(self, domid: int) -> dict[str, Any]:
        self.backend.control.send("input-status")
        assert self.backend.control.poll(PATIENCE)
        statuses: list[dict[str, Any]] = self.backend.control.recv()
        (status,) = [s for s in statuses if s["frontend"] == domid]
        return status


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with rigs.backend_world(World) as running:
        yield running


FULL = "backend=0,feature-abs-pointer=1,feature-multi-touch=1,multi-touch-num-contacts=4"


def test_key_click_and_two_finger_touch_arrive_with_codes_coordinates_and_contacts(
    world: World,
) -> None:
    guest = world.add_guest(FULL)
    assert guest("info") == {
        "unique_id": f"dom{guest.domid}",
        "width": 640,
        "height": 480,
        "abs_pointer": True,
        "raw_pointer": False,
        "multi_touch": True,
        "mt": (640, 480, 4),
    }
    world.send(guest, Key(KEY_A, True), Key(KEY_A, False))
    assert guest("read", 2) == [("Key", True, KEY_A), ("Key", False, KEY_A)]
    world.send(guest, PointerMove(100, 50), Key(BTN_LEFT, True), Key(BTN_LEFT, False), Wheel(1))
    assert guest("read", 4) == [
        ("Position", 100, 50, 0),
        ("Key", True, BTN_LEFT),
        ("Key", False, BTN_LEFT),
        ("Position", 100, 50, -1),
    ]
    world.send(guest, TouchDown(7, 10, 20), TouchDown(9, 300, 400))
    world.send(guest, TouchMove(9, 310, 410), TouchUp(7), TouchUp(9))
    assert guest("read", 7) == [
        ("MtDown", 0, 10, 20),
        ("MtDown", 1, 300, 400),
        ("MtSyn", 1),
        ("MtMotion", 1, 310, 410),
        ("MtUp", 0),
        ("MtUp", 1),
        ("MtSyn", 1),
    ]
    # Coordinates outside the connector are clamped to its edge.
    world.send(guest, PointerMove(5000, -3))
    assert guest("read", 1) == [("Position", 639, 0, 0)]


@pytest.mark.parametrize("offered", [True, False])
def test_a_frontend_that_requests_raw_pointer_gets_unscaled_positions_when_offered(
    world: World, offered: bool
) -> None:
    """kbdif.h: raw positions span 0..0x7fff whatever the device's width and height."""
    vkb = "backend=0,feature-abs-pointer=1,width=1000,height=500"
    guest = world.add_guest(vkb + (",feature-raw-pointer=1" if offered else ""), "640x480", "raw")
    assert guest("info")["raw_pointer"] is offered
    assert world.xs.read(f"{front_path(guest)}/{kbdif.FIELD_REQ_RAW_POINTER}") == (
        b"1" if offered else b"0"
    )
    world.send(guest, PointerMove(639, 479), PointerMove(0, 240), Wheel(1))
    if offered:
        expected = [(0x7FFF, 0x7FFF, 0), (0, 16417, 0), (0, 16417, -1)]
    else:
        expected = [(998, 498, 0), (0, 250, 0), (0, 250, -1)]
    assert guest("read", 3) == [("Position", *position) for position in expected]


def front_path(guest: rigs.Guest) -> str:
    return xenbus.frontend_path(guest.domid, kbdif.DRIVER_NAME, 0)


def test_relative_only_device_gets_motion_deltas(world: World) -> None:
    guest = world.add_guest("backend=0")
    world.send(guest, PointerMove(30, 40), PointerMove(20, 45), TouchDown(0, 1, 1))
    assert guest("read", 2) == [("Motion", 30, 40, 0), ("Motion", -10, 5, 0)]


def test_a_full_ring_drops_the_oldest_input_and_counts_it(world: World) -> None:
    guest = world.add_guest(FULL)
    total = kbdif.IN_RING_LEN * 2 + 10  # ring + backlog + 10 too many
    for start in range(0, total, 37):
        codes = range(start + 1, min(start + 37, total) + 1)
        world.send(guest, *(Key(code, True) for code in codes))
    receipt = world.send(guest)
    assert receipt.dropped == 10
    assert world.input_status(guest.domid)["dropped"] == 10
    received = [event[2] for event in guest("read", total - 10)]
    ring = list(range(1, kbdif.IN_RING_LEN + 1))
    newest = list(range(kbdif.IN_RING_LEN + 11, total + 1))
    assert received == ring + newest


@pytest.mark.parametrize(
    ("offset", "value"),
    [
        (kbdif.OUT_PROD_OFFSET, 3),  # an out event: kbdif defines none
        (kbdif.OUT_PROD_OFFSET, 0xDEADBEEF),  # an impossible out index
        (kbdif.IN_CONS_OFFSET, 0x80000000),  # in_cons far from in_prod
    ],
)
def test_misbehaving_guest_is_disconnected_and_others_carry_on(
    world: World, offset: int, value: int
) -> None:
    good, bad = world.add_guest(FULL), world.add_guest(FULL)
    bad("poke", offset, value)
    back = xenbus.backend_path(BACKEND, kbdif.DRIVER_NAME, bad.domid, 0)
    rigs.wait_until(lambda: world.xs.read(f"{back}/state") == b"5", "the backend to close it")
    with pytest.raises(OSError) as raised:
        world.send(bad, Key(KEY_A, True))
    assert raised.value.errno == 2
    world.send(good, Key(KEY_A, True))
    assert good("read", 1) == [("Key", True, KEY_A)]


def test_input_for_a_connector_without_a_bound_device_is_enoent(world: World) -> None:
    with pytest.raises(OSError) as raised, PlaneClient(world.planes_socket) as client:
        client.send_input(PlaneKey(999, 0, 0), [Key(KEY_A, True)])
    assert raised.value.errno == 2
