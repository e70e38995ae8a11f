"""PV input end to end with real processes: xenstored, broker, backend domain, guest domains.

Each guest runs the real display frontend (so its connector is published) and the real
input frontend (`Keyboard`); the test plays an output and sends events with
`PlaneClient.send_input`, then asks the guest what arrived on its ring.
"""

import contextlib
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pvdisplay import toolstack, xenbus
from pvdisplay.hv.local.host import DomainProcess, Host
from pvdisplay.input import config
from pvdisplay.input.events import Key, PointerMove, TouchDown, TouchMove, TouchUp, Wheel
from pvdisplay.planes import PlaneClient, PlaneKey
from pvdisplay.store.client import Client, Transaction
from pvdisplay.wire import kbdif

BACKEND = 0
PATIENCE = 60.0  # hang protection only
BTN_LEFT = 0x110
KEY_A = 30
_domids = itertools.count(1)


@dataclass
class Guest:
    process: DomainProcess
    domid: int

    def __call__(self, *command: Any) -> Any:
        self.process.control.send(command)
        return receive(self.process)

    @property
    def key(self) -> PlaneKey:
        return PlaneKey(self.domid, 0, 0)


def receive(process: DomainProcess) -> Any:
    if not process.control.poll(PATIENCE):
        pytest.fail(f"domain {process.domid} sent nothing (exit {process.returncode})")
    status, value = process.control.recv()
    assert status in ("ok", "ready"), value
    return value


@dataclass
class World:
    host: Host
    xs: Client
    xenstore_dir: str
    planes_socket: str
    backend: DomainProcess

    def add_guest(self, vkb: str, resolution: str = "640x480") -> Guest:
        domid = next(_domids)
        self.xs.introduce(domid, 0, 1)
        unique_id = f"dom{domid}"
        width, height = resolution.split("x")
        vdispl = toolstack.Vdispl(
            0, BACKEND, False, (toolstack.Connector(unique_id, int(width), int(height)),)
        )
        device = config.parse_xl_vkb(f"{vkb},unique-id={unique_id}", 0, "vkb", {}, BACKEND)
        for plan in (
            toolstack.domain_nodes(domid, f"guest{domid}"),
            toolstack.vdispl_nodes(domid, vdispl),
            config.vkb_nodes(domid, device, [vdispl]),
        ):
            apply(self.xs, plan)
        process = self.host.start_domain("test_input_agents:guest", self.xenstore_dir, domid=domid)
        receive(process)
        return Guest(process, domid)

    def send(self, guest: Guest, *events: Any) -> Any:
        with PlaneClient(self.planes_socket) as client:
            return client.send_input(guest.key, list(events))

    def input_status(self, domid: int) -> dict[str, Any]:
        self.backend.control.send("input-status")
        assert self.backend.control.poll(PATIENCE)
        statuses: list[dict[str, Any]] = self.backend.control.recv()
        (status,) = [s for s in statuses if s["frontend"] == domid]
        return status


def apply(xs: Client, plan: toolstack.NodePlan) -> None:
    def body(txn: Transaction) -> None:
        for path in plan.removals:
            with contextlib.suppress(FileNotFoundError):
                txn.rm(path)
        for write in plan.writes:
            txn.write(write.path, write.value)
            txn.set_permissions(write.path, list(write.permissions))

    xs.transact(body)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    workdir = tempfile.mkdtemp(prefix="pvi-", dir="/tmp")
    xenstore_dir = f"{workdir}/xs"
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pvdisplay.cli import main; main()",
            "--log-level",
            "warning",
            "xenstored",
            "--socket-dir",
            xenstore_dir,
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{xenstore_dir}/socket").exists():
            assert time.monotonic() < deadline and daemon.poll() is None, "xenstored did not start"
            time.sleep(0.05)
        with Client(f"{xenstore_dir}/socket") as xs:

            def release(domid: int) -> None:
                if domid != BACKEND:
                    xs.release(domid)

            with Host(on_domain_released=release) as host:
                planes_socket = f"{workdir}/planes"
                backend = host.start_domain(
                    "pvdisplay.display.service:run", xenstore_dir, planes_socket, domid=BACKEND
                )
                yield World(host, xs, xenstore_dir, planes_socket, backend)
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(workdir, ignore_errors=True)


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
    deadline = time.monotonic() + PATIENCE
    while world.xs.read(f"{back}/state") != b"5":
        assert time.monotonic() < deadline, "the backend did not close the bad guest"
        time.sleep(0.05)
    with pytest.raises(OSError) as raised:
        world.send(bad, Key(KEY_A, True))
    assert raised.value.errno == 2
    world.send(good, Key(KEY_A, True))
    assert good("read", 1) == [("Key", True, KEY_A)]


def test_input_for_a_connector_without_a_bound_device_is_enoent(world: World) -> None:
    with pytest.raises(OSError) as raised, PlaneClient(world.planes_socket) as client:
        client.send_input(PlaneKey(999, 0, 0), [Key(KEY_A, True)])
    assert raised.value.errno == 2
