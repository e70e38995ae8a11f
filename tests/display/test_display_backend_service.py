"""The backend service end to end: real xenstored, broker, backend and frontend domains.

The frontends are raw (`XenbusFrontend`: XenStore nodes, shared rings and event
channels built on the wire codecs), so the tests control every byte and every state
the backend sees.
"""

import errno
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

import rigs
from display_backend_agents import Remote, start
from pvdisplay import xenbus
from pvdisplay.display.limits import DEFAULT_PAGE_BUDGET
from pvdisplay.hv import PAGE_SIZE
from pvdisplay.planes.client import PlaneClient
from pvdisplay.store.client import Transaction
from pvdisplay.store.permissions import Access, Permission
from pvdisplay.wire import displif, edid
from pvdisplay.wire.fourcc import XRGB8888
from pvdisplay.wire.ring import ring_size
from rigs import BACKEND, PATIENCE

pytestmark = pytest.mark.processes

XR24 = XRGB8888.fourcc
State = xenbus.XenbusState


class World(rigs.Rig):
    def add_guest(self, resolutions: list[str], be_alloc: bool = False) -> Remote:
        """Write the device as the toolstack does, then start the guest domain."""
        fe = next(self.domids)
        self.xs.introduce(fe, 0, 1)
        front = xenbus.frontend_path(fe, "vdispl", 0)
        back = xenbus.backend_path(BACKEND, "vdispl", fe, 0)
        nodes = {
            f"{front}/backend": back,
            f"{front}/backend-id": str(BACKEND),
            f"{front}/state": "1",
            f"{front}/be-alloc": "1" if be_alloc else "0",
        }
        for index, resolution in enumerate(resolutions):
            nodes[f"{front}/{index}/resolution"] = resolution
            nodes[f"{front}/{index}/unique-id"] = f"dom{fe}-{index}"
        back_nodes = {
            back: "",
            f"{back}/frontend": front,
            f"{back}/frontend-id": str(fe),
            f"{back}/online": "1",
            f"{back}/state": "1",
        }
        guest_owned = [Permission(fe, Access.NONE), Permission(BACKEND, Access.READ)]
        backend_owned = [Permission(BACKEND, Access.NONE), Permission(fe, Access.READ)]
        connector_dirs = [f"{front}/{i}" for i in range(len(resolutions))]

        # One transaction, as libxl does: the backend never sees a half-written device.
        def write_device(txn: Transaction) -> None:
            for path, value in {front: "", **dict.fromkeys(connector_dirs, ""), **nodes}.items():
                txn.write(path, value)
                txn.set_permissions(path, guest_owned)
            for path, value in back_nodes.items():
                txn.write(path, value)
                txn.set_permissions(path, backend_owned)

        self.xs.transact(write_device)
        return start(self.host, "xenbus", self.xenstore_dir, str(BACKEND), domid=fe)

    def backend_status(self) -> list[dict[str, object]]:
        self.backend.control.send("status")
        assert self.backend.control.poll(PATIENCE)
        status: list[dict[str, object]] = self.backend.control.recv()
        return status

    def backend_state(self, fe: int) -> int:
        return int(self.xs.read(f"{xenbus.backend_path(BACKEND, 'vdispl', fe, 0)}/state"))


@pytest.fixture
def world() -> Iterator[World]:
    with rigs.backend_world(World, "display_backend_agents:restartable_backend") as running:
        yield running


def request(guest: Remote, connector: int, req: displif.Request) -> displif.Response:
    response = displif.decode_response(guest("call", connector, req.encode()))
    assert (response.id, response.operation) == (req.id, req.operation)
    return response


def show_buffer(guest: Remote, width: int, height: int, seed: int) -> bytes:
    """Create a frontend-allocated XRGB8888 buffer with fb cookie 2 on it; return its pixels."""
    size = width * height * 4
    refs = guest("share", "fb", displif.grefs_for_buffer(size))
    pixels: bytes = guest("pattern", "fb", 0, size, seed)
    directory = guest("directory", "fb-dir", refs)
    create = displif.DbufCreate(1, 1, width, height, 32, size, 0, directory, 0)
    assert request(guest, 0, create).status == 0
    assert request(guest, 0, displif.FbAttach(2, 1, 2, width, height, XR24)).status == 0
    return pixels


def flip(guest: Remote, connector: int, rid: int) -> displif.PageFlipEvent:
    assert request(guest, connector, displif.PageFlip(rid, 2)).status == 0
    (event,) = guest("events", connector, 1)
    return displif.decode_event(event)


def test_connect_serve_and_publish_planes(world: World) -> None:
    guest = world.add_guest(["640x480", "320x200"])
    assert guest("connect", 2) == State.CONNECTED
    pixels = show_buffer(guest, 320, 200, seed=1)
    assert request(guest, 1, displif.SetConfig(3, 2, 0, 0, 320, 200, 32)).status == 0
    assert [flip(guest, 1, 10 + n).id for n in range(3)] == [0, 1, 2]
    assert flip(guest, 0, 20) == displif.PageFlipEvent(0, 2)

    refs = guest("share", "edid", 8)
    directory = guest("directory", "edid-dir", refs)
    response = request(guest, 1, displif.GetEdid(30, displif.EDID_MAX_SIZE, directory))
    assert response.status == 0
    info = edid.parse_edid(guest("read", "edid", 0, response.edid_sz))
    assert (info.width, info.height) == (320, 200)

    with PlaneClient(world.planes_socket) as planes:
        listed = {(p.domid, p.connector): p for p in planes.list()}
        assert set(listed) == {(guest.domid, 0), (guest.domid, 1)}
        assert listed[guest.domid, 1].unique_id == f"dom{guest.domid}-1"
        plane, snapshot = planes.snapshot(guest.domid, 1)
        assert (plane.fb_cookie, plane.fourcc, plane.frame) == (2, "XR24", 4)
        assert snapshot.tobytes() == pixels
        # The same buffer handle serves every flip of that framebuffer.
        first, handle = planes.get(guest.domid, 1)
        assert handle is not None
        handle.close()
        flip(guest, 1, 40)
        second, handle = planes.get(guest.domid, 1)
        assert handle is not None
        handle.close()
        assert first.buffer_id == second.buffer_id and second.frame == first.frame + 1
    assert world.backend_status()[0]["bytes_copied"] == 0


def test_a_frontend_that_writes_no_version_is_served_at_version_2(world: World) -> None:
    # Linux's xen-drm-front writes no `version` and asks for GET_EDID (a version 2 request).
    guest = world.add_guest(["320x200"])
    assert guest("connect", 1, "") == State.CONNECTED
    refs = guest("share", "edid", 8)
    directory = guest("directory", "edid-dir", refs)
    response = request(guest, 0, displif.GetEdid(1, displif.EDID_MAX_SIZE, directory))
    assert response.status == 0
    info = edid.parse_edid(guest("read", "edid", 0, response.edid_sz))
    assert (info.width, info.height) == (320, 200)
    show_buffer(guest, 320, 200, seed=3)
    assert request(guest, 0, displif.SetConfig(2, 2, 0, 0, 320, 200, 32)).status == 0
    assert flip(guest, 0, 3) == displif.PageFlipEvent(0, 2)


def test_a_frontend_version_the_backend_does_not_offer_is_refused(world: World) -> None:
    guest = world.add_guest(["320x200"])
    assert guest("connect", 1, "3", State.CLOSING) == State.CLOSING


def test_frontend_death_mid_flip_frees_everything(world: World) -> None:
    guest = world.add_guest(["640x480"], be_alloc=True)
    assert guest("connect", 1) == State.CONNECTED
    show_buffer(guest, 640, 480, seed=2)
    pages = displif.grefs_for_buffer(640 * 480 * 4)
    be_dir = guest("empty_directory", "be-dir", pages)
    create = displif.DbufCreate(5, 7, 640, 480, 32, 640 * 480 * 4, 1, be_dir, 0)
    assert request(guest, 0, create).status == 0
    guest("map", "be", guest("directory_refs", "be-dir", pages))
    for rid in range(10, 20):
        guest("post", 0, displif.PageFlip(rid, 2).encode())
    guest.domain.kill(signal.SIGKILL)
    assert world.host.wait_released(guest.domid, PATIENCE)

    # The backend notices, gives everything back, and waits for a new connection.
    deadline = time.monotonic() + PATIENCE
    while world.backend_status()[0]["state"] != State.INIT_WAIT:
        assert time.monotonic() < deadline, world.backend_status()
        time.sleep(0.05)
    usage = world.host.usage(BACKEND)
    assert (usage["mapped_pages"], usage["granted_pages"], usage["memory_pages"]) == (0, 0, 0)
    stats = world.host.stats()
    assert (stats["maps"], stats["exports"], stats["grants"], stats["allocations"]) == (0, 0, 0, 0)
    with PlaneClient(world.planes_socket) as planes:
        assert planes.list() == []


def test_impossible_ring_indices_disconnect_only_that_guest(world: World) -> None:
    rogue = world.add_guest(["640x480"])
    honest = world.add_guest(["320x200"])
    assert rogue("connect", 1) == State.CONNECTED
    assert honest("connect", 1) == State.CONNECTED
    show_buffer(honest, 320, 200, seed=3)
    assert flip(honest, 0, 10).id == 0

    rogue("corrupt_ring", 0)
    assert rogue("wait_backend_state", State.CLOSING) == State.CLOSING
    assert [flip(honest, 0, 11 + n).id for n in range(3)] == [1, 2, 3]
    with PlaneClient(world.planes_socket) as planes:
        assert {p.domid for p in planes.list()} == {honest.domid}


def test_frontend_close_and_reconnect_starts_afresh(world: World) -> None:
    guest = world.add_guest(["640x480"])
    assert guest("connect", 1) == State.CONNECTED
    show_buffer(guest, 64, 64, seed=4)
    assert [flip(guest, 0, n).id for n in (10, 11)] == [0, 1]

    guest("set_state", State.CLOSING)
    assert guest("wait_backend_state", State.CLOSING) == State.CLOSING
    guest("set_state", State.CLOSED)
    assert guest("wait_backend_state", State.INIT_WAIT) == State.INIT_WAIT
    assert world.host.usage(BACKEND)["mapped_pages"] == 0

    guest("free", "fb")
    guest("free", "fb-dir")
    assert guest("connect", 1) == State.CONNECTED
    show_buffer(guest, 64, 64, seed=5)
    assert flip(guest, 0, 12).id == 0  # event ids count from 0 per connection


def test_a_device_the_toolstack_takes_offline_ends_closed_as_libxl_waits_for(
    world: World,
) -> None:
    guest = world.add_guest(["640x480"])
    assert guest("connect", 1) == State.CONNECTED
    back = xenbus.backend_path(BACKEND, "vdispl", guest.domid, 0)
    # What libxl does to remove a device: online = 0, then it waits for Closed.
    world.xs.write(f"{back}/online", "0")
    guest("set_state", State.CLOSING)
    assert guest("wait_backend_state", State.CLOSING) == State.CLOSING
    guest("set_state", State.CLOSED)
    assert guest("wait_backend_state", State.CLOSED) == State.CLOSED
    assert world.host.usage(BACKEND)["mapped_pages"] == 0


def test_a_frontend_that_stops_reading_events_loses_only_those_without_room(
    world: World,
) -> None:
    guest = world.add_guest(["640x480"])
    assert guest("connect", 1) == State.CONNECTED
    show_buffer(guest, 64, 64, seed=8)
    overflow = 3
    flips = displif.IN_RING_LEN + overflow
    for n in range(flips):
        assert request(guest, 0, displif.PageFlip(100 + n, 2)).status == 0
    events = [displif.decode_event(event) for event in guest("events", 0, flips, 1.0)]
    assert [event.id for event in events] == list(range(displif.IN_RING_LEN))
    # Read, the page has room again, and event ids went on counting through the drops.
    assert flip(guest, 0, 500).id == flips


def test_a_ring_full_before_connected_is_served_and_the_next_request_heard(
    world: World,
) -> None:
    guest = world.add_guest(["640x480"])
    unknown_fb = displif.PageFlip(7, 0xDEAD).encode()
    assert guest("connect", 1, "2", State.CONNECTED, unknown_fb) == State.CONNECTED
    for _ in range(ring_size(displif.REQUEST_SIZE, PAGE_SIZE)):
        response = displif.decode_response(guest("response", 0))
        assert (response.id, response.status) == (7, -errno.ENOENT)
    # Having answered a full ring, the backend still asked to hear of the next request.
    assert request(guest, 0, displif.PageFlip(8, 0xDEAD)).status == -errno.ENOENT


def test_backend_restart_is_reconnected_by_a_live_frontend(world: World) -> None:
    guest = world.add_guest(["640x480"])
    assert guest("connect", 1) == State.CONNECTED
    pixels = show_buffer(guest, 64, 64, seed=6)
    flip(guest, 0, 10)

    world.backend.control.send("stop")
    rigs.wait_until(lambda: not world.host.usage(BACKEND)["mapped_pages"], "the backend to stop")
    world.backend.control.send("start")
    # The new backend offers a new connection; the frontend starts over and is served.
    assert guest("wait_backend_state", State.INIT_WAIT) == State.INIT_WAIT
    guest("free", "fb")
    guest("free", "fb-dir")
    assert guest("connect", 1) == State.CONNECTED
    pixels = show_buffer(guest, 64, 64, seed=7)
    assert flip(guest, 0, 11).id == 0
    with PlaneClient(world.planes_socket) as planes:
        _, snapshot = planes.snapshot(guest.domid, 0)
        assert np.array_equal(snapshot, np.frombuffer(pixels, np.uint8))


def test_a_guest_flooding_the_backend_with_buffers_leaves_the_others_served(world: World) -> None:
    flooder = world.add_guest(["640x480"], be_alloc=True)
    honest = world.add_guest(["320x200"], be_alloc=True)
    assert flooder("connect", 1) == State.CONNECTED
    assert honest("connect", 1) == State.CONNECTED
    # Half a budget of granted pages, imported again and again, then ever smaller parts of
    # them: without a budget this fills everything the backend domain may map (524288
    # pages), and the other guest's buffers find no room.
    chunk = DEFAULT_PAGE_BUDGET // 2
    refs = flooder("share", "big", chunk)
    accepted, pages, cookie = 0, chunk, 0
    refusals: set[int] = set()
    while pages:
        cookie += 1
        directory = flooder("directory", f"dir{cookie}", refs[:pages])
        create = displif.DbufCreate(cookie, cookie, 0, 0, 0, pages * 4096, 0, directory, 0)
        refused = request(flooder, 0, create).status
        if refused:
            refusals.add(refused)
            pages //= 2
        else:
            accepted += pages
    assert (accepted, refusals) == (DEFAULT_PAGE_BUDGET, {-errno.ENOMEM})
    be_dir = flooder("empty_directory", "be-dir", 1)
    be_create = displif.DbufCreate(200, 200, 16, 16, 32, 4096, 1, be_dir, 0)
    assert request(flooder, 0, be_create).status == -errno.ENOMEM

    show_buffer(honest, 320, 200, seed=8)
    assert [flip(honest, 0, 10 + n).id for n in range(3)] == [0, 1, 2]
    size = 320 * 200 * 4
    be_dir = honest("empty_directory", "be-dir", displif.grefs_for_buffer(size))
    be_create = displif.DbufCreate(20, 7, 320, 200, 32, size, 1, be_dir, 0)
    assert request(honest, 0, be_create).status == 0
    status = {device["frontend"]: device for device in world.backend_status()}
    assert status[flooder.domid]["pages"] == 2 * chunk
    assert status[flooder.domid]["page_budget"] == DEFAULT_PAGE_BUDGET


@pytest.mark.parametrize(
    "nodes",
    [
        {"resolution": "65535x65535", "unique-id": "huge"},
        {"resolution": "0x0", "unique-id": "empty"},
        {"resolution": "16384x16384", "unique-id": "past-the-buffer-limit"},
        {"resolution": "640x480", "unique-id": "x" * 65},
        {"resolution": "640x480", "unique-id": "two;ids"},
    ],
    ids=["65535x65535", "0x0", "16384x16384", "long-id", "separator-in-id"],
)
def test_a_guest_that_rewrites_its_connector_is_closed(world: World, nodes: dict[str, str]) -> None:
    # The toolstack's resolution and unique-id are read-only to the guest, but the
    # connector directory holding them is the guest's: removing it removes them.
    guest = world.add_guest(["640x480"])
    guest("rewrite_connector", 0, nodes)
    assert guest("connect", 1, "2", State.CLOSING) == State.CLOSING
    with PlaneClient(world.planes_socket) as planes:
        assert planes.list() == []


def test_a_closed_connector_rewrite_recovers_and_old_libxl_id_is_read(world: World) -> None:
    guest = world.add_guest(["640x480"])
    guest("rewrite_connector", 0, {"resolution": "0x480", "unique-id": "zero"})
    assert guest("connect", 1, "2", State.CLOSING) == State.CLOSING
    guest("set_state", State.CLOSED)
    assert guest("wait_backend_state", State.INIT_WAIT) == State.INIT_WAIT
    # Older libxl writes the unique-id as `id`.
    guest("rewrite_connector", 0, {"resolution": "320x200", "id": "legacy"})
    assert guest("connect", 1) == State.CONNECTED
    with PlaneClient(world.planes_socket) as planes:
        (plane,) = planes.list()
    assert (plane.unique_id, plane.mode_width, plane.mode_height) == ("legacy", 320, 200)
