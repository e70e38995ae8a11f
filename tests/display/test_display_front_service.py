"""The frontend library against the project's backend (`pvdisplay.display.service`).

Pictures are checked where outputs read them: the backend's planes socket.
"""

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from display_front_peer import BACKEND_DOMID, REPLY_TIMEOUT, Guest, Rig

from pvdisplay import toolstack
from pvdisplay.guests.pattern import expected_rgb
from pvdisplay.hv.local.launcher import DomainProcess
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.model import PlaneInfo
from pvdisplay.wire import fourcc
from rigs import PATIENCE

pytestmark = pytest.mark.processes

GUEST = 1
CONNECTORS = (toolstack.Connector("left", 64, 48), toolstack.Connector("right", 40, 30))


class ServiceRig(Rig):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.planes_socket = directory / "planes.sock"
        self._apply(toolstack.domain_nodes(BACKEND_DOMID, "Domain-0"))
        self.service = self.start_service()

    def start_service(self) -> DomainProcess:
        if BACKEND_DOMID in self.host.domains:
            # The id is free again only once the broker has destroyed the old domain.
            assert self.host.wait_released(BACKEND_DOMID, PATIENCE)
        return self.host.start_domain(
            "pvdisplay.backend_domain:run",
            str(self.xenstore_dir),
            str(self.planes_socket),
            domid=BACKEND_DOMID,
        )

    def snapshot(self, connector: int) -> tuple[PlaneInfo, np.ndarray]:
        with PlaneClient(self.planes_socket) as planes:
            return planes.snapshot(GUEST, connector)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[ServiceRig]:
    running = ServiceRig(tmp_path)
    try:
        yield running
    finally:
        running.close()


def assert_plane_shows(
    rig: ServiceRig, connector: int, name: str, size: tuple[int, int], seed: int
) -> None:
    fmt = fourcc.by_name(name)
    info, pixels = rig.snapshot(connector)
    assert (info.fourcc, info.width, info.height) == (fourcc.fourcc_text(fmt.fourcc), *size)
    shown = fourcc.to_rgb(fmt, pixels, info.width, info.height, info.stride)
    assert np.array_equal(shown, expected_rgb(fmt, *size, seed))


@pytest.mark.parametrize(
    ("be_alloc", "name"), [(False, "XRGB8888"), (True, "YUYV")], ids=["fe-alloc", "be-alloc"]
)
def test_the_pattern_guest_shows_on_every_connector(
    rig: ServiceRig, be_alloc: bool, name: str
) -> None:
    rig.add_guest(GUEST, toolstack.Vdispl(0, BACKEND_DOMID, be_alloc, CONNECTORS))
    guest = rig.host.start_domain(
        "pvdisplay.guests.pattern:run",
        str(rig.xenstore_dir / "domain" / str(GUEST)),
        "alpha",
        name,
        "9",
        domid=GUEST,
    )
    assert guest.control.poll(REPLY_TIMEOUT)
    report = guest.control.recv()
    assert [(c["unique_id"], c["width"], c["height"]) for c in report["connectors"]] == [
        ("left", 64, 48),
        ("right", 40, 30),
    ]
    for index, connector in enumerate(CONNECTORS):
        assert_plane_shows(rig, index, name, (connector.width, connector.height), 9 + index)
    guest.control.send("stop")
    assert guest.wait(REPLY_TIMEOUT) == 0


def test_every_format_reaches_the_plane(rig: ServiceRig) -> None:
    rig.add_guest(GUEST, toolstack.Vdispl(0, BACKEND_DOMID, False, CONNECTORS))
    guest = rig.start_guest(GUEST)
    described = guest("open")
    assert described["version"] == 2
    assert [c["edid"] for c in described["connectors"]] == [(64, 48), (40, 30)]
    for seed, fmt in enumerate(fourcc.FORMATS):
        guest("create", fmt.name, 64, 48, fmt.name, seed)
        guest("config", 0, fmt.name, 0, 0)
        guest("flip", 0, fmt.name)
        assert_plane_shows(rig, 0, fmt.name, (64, 48), seed)
        guest("close_fb", fmt.name)


def test_a_restarted_backend_is_reconnected(rig: ServiceRig) -> None:
    rig.add_guest(GUEST, toolstack.Vdispl(0, BACKEND_DOMID, True, CONNECTORS))
    guest: Guest = rig.start_guest(GUEST)
    guest("open")
    guest("create", "a", 64, 48, "XRGB8888", 1)
    guest("config", 0, "a", 0, 0)
    guest("flip", 0, "a")

    rig.service.kill(signal.SIGKILL)
    assert guest("wait_state", "RECONFIGURING") == "RECONFIGURING"
    guest("close_fb", "a")
    assert guest("wait_state", "INITIALISING") == "INITIALISING"
    assert rig.host.wait_released(BACKEND_DOMID, REPLY_TIMEOUT)
    rig.service = rig.start_service()

    assert guest("wait_connected")["state"] == "CONNECTED"
    guest("create", "b", 64, 48, "RGB888", 2)
    guest("config", 0, "b", 0, 0)
    guest("flip", 0, "b")
    assert_plane_shows(rig, 0, "RGB888", (64, 48), 2)
