"""The frontend library in real domains against a real backend domain, over real xenstored.

The backend is the test-only one in display_front_peer (it can be told to stay
silent or to drop flip events); test_display_front_service runs the same library against
the project's backend.
"""

import errno
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from display_front_peer import Backend, Guest, GuestError, Rig

from pvdisplay import toolstack, xenbus
from pvdisplay.guests.pattern import pattern
from pvdisplay.store.permissions import Access, Permission
from pvdisplay.wire import fourcc
from pvdisplay.xenbus import XenbusState
from rigs import PATIENCE

pytestmark = pytest.mark.processes

GUEST = 1
LEFT = toolstack.Connector("left", 64, 48)
RIGHT = toolstack.Connector("right", 40, 30)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    running = Rig(tmp_path)
    try:
        yield running
    finally:
        running.close()


def start(
    rig: Rig, mode: str = "serve", be_alloc: bool = False, open_display: bool = True
) -> tuple[Backend, Guest]:
    rig.add_guest(GUEST, toolstack.Vdispl(0, 0, be_alloc, (LEFT, RIGHT)))
    backend = rig.start_backend(GUEST, mode)
    guest = rig.start_guest(GUEST)
    if open_display:
        guest("open")
        backend.expect("connected")
    return backend, guest


def assert_shows(backend: Backend, index: int, name: str, size: tuple[int, int], seed: int) -> None:
    width, height = size
    frame = backend.frame(index)
    assert frame is not None
    fmt = fourcc.by_name(name)
    assert (frame["format"], frame["width"], frame["height"]) == (name, width, height)
    shown = np.frombuffer(frame["data"], np.uint8).reshape(height, fmt.min_pitch(width))
    assert np.array_equal(shown, pattern(fmt, width, height, seed))


def test_handshake_reaches_connected_and_publishes_the_transport(rig: Rig) -> None:
    rig.add_guest(GUEST, toolstack.Vdispl(0, 0, False, (LEFT, RIGHT)))
    backend = rig.start_backend(GUEST)
    guest = rig.start_guest(GUEST)
    described = guest("open")
    assert backend.expect("connected") == 2
    assert described["state"] == "CONNECTED"
    assert described["version"] == 2
    # Protocol 2 backend: the modes come from its EDID, which matches the resolution here.
    assert [c["edid"] for c in described["connectors"]] == [(64, 48), (40, 30)]
    assert [c["unique_id"] for c in described["connectors"]] == ["left", "right"]
    front = xenbus.frontend_path(GUEST, "vdispl", 0)
    assert rig.front_state(GUEST) == XenbusState.CONNECTED
    assert rig.xs.read(f"{front}/version") == b"2"
    for index in (0, 1):
        for node in ("req-ring-ref", "req-event-channel", "evt-ring-ref", "evt-event-channel"):
            assert int(rig.xs.read(f"{front}/{index}/{node}")) > 0


def test_a_version_1_backend_leaves_the_resolution_mode(rig: Rig) -> None:
    _, guest = start(rig, mode="v1")
    described = guest("describe")
    assert described["version"] == 1
    assert [(c["mode"], c["edid"]) for c in described["connectors"]] == [
        ((64, 48), None),
        ((40, 30), None),
    ]


@pytest.mark.parametrize("be_alloc", [False, True], ids=["frontend-alloc", "backend-alloc"])
def test_the_backend_shows_what_the_guest_drew(rig: Rig, be_alloc: bool) -> None:
    backend, guest = start(rig, be_alloc=be_alloc)
    assert guest("create", "a", 64, 48, "XRGB8888", 5) == {"pitch": 256, "be": be_alloc}
    guest("config", 0, "a", 0, 0)
    guest("flip", 0, "a")
    assert_shows(backend, 0, "XRGB8888", (64, 48), 5)
    guest("create", "b", 40, 30, "RGB565", 6)
    guest("config", 1, "b", 0, 0)
    assert guest("flip_callback", 1, "b") == "ok"
    assert_shows(backend, 1, "RGB565", (40, 30), 6)
    guest("close_fb", "a")
    guest("close_fb", "b")


def test_every_format_attaches_and_flips(rig: Rig) -> None:
    backend, guest = start(rig)
    for seed, fmt in enumerate(fourcc.FORMATS):
        guest("create", fmt.name, 34, 20, fmt.name, seed)
        guest("config", 0, fmt.name, 0, 0)
        guest("flip", 0, fmt.name)
        assert_shows(backend, 0, fmt.name, (34, 20), seed)
    for fmt in fourcc.FORMATS:
        guest("close_fb", fmt.name)


def test_a_refusal_names_the_operation_and_the_errno(rig: Rig) -> None:
    _, guest = start(rig)
    guest("create", "a", 64, 48, "XRGB8888", 0)
    with pytest.raises(GuestError) as refused:
        guest("config", 0, "a", 10, 0)  # 10 + 64 overflows the 64-pixel connector
    assert refused.value.kind == "DisplayError"
    assert (refused.value.operation, refused.value.errno) == ("SET_CONFIG", errno.EINVAL)
    assert "SET_CONFIG" in str(refused.value) and "-22" in str(refused.value)
    guest("config", 0, "a", 0, 0)  # the device is still fine


def test_pages_still_referenced_are_not_given_back(rig: Rig) -> None:
    _, guest = start(rig)
    guest("create", "a", 64, 48, "XRGB8888", 0)
    guest("hold_array", "a")
    with pytest.raises(GuestError) as busy:
        guest("close_fb", "a")
    assert busy.value.errno == errno.EBUSY
    guest("drop_array", "a")
    guest("close_fb", "a")


def test_a_silent_backend_times_the_request_out(rig: Rig) -> None:
    _, guest = start(rig, mode="silent")
    guest("timers")  # forget the ones armed while connecting
    with pytest.raises(GuestError) as timed_out:
        guest("create", "a", 64, 48, "XRGB8888", 0)
    assert timed_out.value.kind == "DisplayTimeoutError"
    assert (timed_out.value.operation, timed_out.value.errno) == ("DBUF_CREATE", errno.ETIMEDOUT)
    # xen-front's XEN_DRM_FRONT_WAIT_BACK_MS: the one timer the request armed.
    assert guest("timers") == [3.0]
    assert "no answer from the backend in 3.0 s" in str(timed_out.value)


def test_a_flip_without_its_event_times_out(rig: Rig) -> None:
    _, guest = start(rig, mode="no-events")
    guest("create", "a", 64, 48, "XRGB8888", 0)
    guest("timers")
    with pytest.raises(GuestError) as timed_out:
        guest("flip", 0, "a")
    assert (timed_out.value.operation, timed_out.value.errno) == ("EVT_PG_FLIP", errno.ETIMEDOUT)
    # The response's timer (answered in time), then xen-front's FRAME_DONE_TO_MS for the event.
    assert guest("timers") == [3.0, 3.1]
    assert "no answer from the backend in 3.1 s" in str(timed_out.value)


def test_a_unique_id_older_libxl_wrote_as_id_is_read(rig: Rig) -> None:
    rig.add_guest(GUEST, toolstack.Vdispl(0, 0, False, (LEFT, RIGHT)))
    connector = f"{xenbus.frontend_path(GUEST, 'vdispl', 0)}/0"
    rig.xs.rm(f"{connector}/unique-id")
    rig.xs.write(f"{connector}/id", "left")
    rig.xs.set_permissions(
        f"{connector}/id", [Permission(0, Access.NONE), Permission(GUEST, Access.READ)]
    )
    backend = rig.start_backend(GUEST)
    guest = rig.start_guest(GUEST)
    described = guest("open")
    backend.expect("connected")
    assert [c["unique_id"] for c in described["connectors"]] == ["left", "right"]


def test_backend_loss_reconfigures_then_reconnects_when_clients_let_go(rig: Rig) -> None:
    backend, guest = start(rig)
    guest("create", "a", 64, 48, "XRGB8888", 1)
    guest("flip", 0, "a")

    backend.domain.kill(signal.SIGKILL)
    assert guest("wait_state", "RECONFIGURING") == "RECONFIGURING"
    assert rig.front_state(GUEST) == XenbusState.RECONFIGURING
    with pytest.raises(GuestError) as lost:
        guest("flip", 0, "a")
    assert (lost.value.kind, lost.value.errno) == ("DisplayLostError", errno.ENODEV)
    with pytest.raises(GuestError):
        guest("create", "b", 64, 48, "XRGB8888", 2)  # no new clients while reconfiguring
    assert rig.front_state(GUEST) == XenbusState.RECONFIGURING

    guest("close_fb", "a")  # the last client lets go
    assert guest("wait_state", "INITIALISING") == "INITIALISING"
    assert rig.host.wait_released(0, PATIENCE)

    backend = rig.start_backend(GUEST)
    assert backend.expect("connected") == 2
    assert guest("wait_connected")["state"] == "CONNECTED"
    guest("create", "b", 64, 48, "ARGB8888", 2)
    guest("config", 0, "b", 0, 0)
    guest("flip", 0, "b")
    assert_shows(backend, 0, "ARGB8888", (64, 48), 2)


def test_close_hands_the_device_back(rig: Rig) -> None:
    backend, guest = start(rig)
    guest("create", "a", 64, 48, "XRGB8888", 0)
    guest("close")
    assert backend.expect("disconnected") in (XenbusState.CLOSING, XenbusState.CLOSED)
    assert rig.front_state(GUEST) == XenbusState.CLOSED
