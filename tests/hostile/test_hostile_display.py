"""Attacks on the display backend from a guest: every descriptor a device makes the
backend hold is counted against its budget, over it DBUF_CREATE answers -ENOMEM, and
what a dead guest held is given back when its death is noticed."""

import errno
import os
import resource
import signal
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_agents import Remote
from hostile_world import Hostile, guest, world

from pvdisplay import toolstack, xenbus
from pvdisplay.display.limits import DEFAULT_DESCRIPTOR_BUDGET
from pvdisplay.ipc.sockets import close_all, rights
from pvdisplay.planes.server import MAX_CLIENTS
from pvdisplay.store.tree import Quotas
from pvdisplay.toolstack import vkb as vkb_config
from rigs import PATIENCE, wait_until

pytestmark = pytest.mark.processes

FLOOD = "hostile_agents:dbuf_flood"
HEADER = struct.Struct("<II")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    with world(tmp_path_factory.mktemp("hostile")) as running:
        yield running


@pytest.mark.parametrize(("spec", "per_buffer"), [("", 3), ("be-alloc=1,", 4)])
def test_one_page_buffers_in_a_loop_get_enomem_from_the_backend_and_nobody_else_notices(
    hostile: Hostile, spec: str, per_buffer: int
) -> None:
    host = hostile.host
    before = hostile.resources()
    attacker = host.start_guest(guest("flood", f"{spec}connectors=c0:64x48"), FLOOD)
    assert attacker.process.control.poll(PATIENCE)
    made, code = attacker.process.control.recv()
    # The backend's answer, after its budget: 3 descriptors a buffer (the handle's memfd
    # and lease, the release watch), 4 with the backend's own pages.
    assert (made, code) == (DEFAULT_DESCRIPTOR_BUDGET // per_buffer, errno.ENOMEM)
    hostile.wait_flips()

    attacker.process.kill()
    host.wait_guest_destroyed(attacker.domid, PATIENCE)
    hostile.wait_resources(before)
    hostile.wait_flips()


def test_the_host_config_sets_the_descriptor_budget() -> None:
    config = toolstack.parse_config(
        "[backend]\ndescriptor_budget = 12\nplanes_clients = 3\n[hypervisor]\ndescriptors = 99\n"
    )
    assert config.backend.descriptor_budget == 12
    assert config.backend.planes_clients == 3
    assert config.limits.descriptors == 99
    with pytest.raises(toolstack.ConfigError, match=r"hypervisor\.descriptors"):
        toolstack.parse_config("[hypervisor]\ndescriptors = 0\n")


def test_ten_thousand_xenstore_watches_stop_at_the_quota(hostile: Hostile) -> None:
    host = hostile.host
    before = hostile.resources()
    attacker = host.start_guest(guest("watcher"), "hostile_agents:watch_flood")
    assert attacker.process.control.poll(PATIENCE)
    made, code = attacker.process.control.recv()
    # xenstored's watch quota, over all of the guest's connections: E2BIG as in C xenstored.
    assert (made, code) == (Quotas().watches, errno.E2BIG)
    hostile.wait_flips()
    attacker.process.kill()
    host.wait_guest_destroyed(attacker.domid, PATIENCE)
    hostile.wait_resources(before)


def test_a_local_client_opening_hundreds_of_planes_connections_is_turned_away(
    hostile: Hostile,
) -> None:
    before = hostile.resources()
    flood = []
    for _ in range(3 * MAX_CLIENTS):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(str(hostile.host.planes_socket))
        sock.settimeout(PATIENCE)
        flood.append(sock)
    served = MAX_CLIENTS - 1  # the test's own observer holds one place
    turned_away: set[socket.socket] = set()

    def all_turned_away() -> bool:
        turned_away.update(sock for sock in flood if refused(sock))
        return len(turned_away) >= len(flood) - served

    wait_until(all_turned_away, "the server to turn the flood away")
    assert len(turned_away) == len(flood) - served
    # The backend holds a descriptor for the clients it serves, no more, and the honest
    # guest flips on (counted through the observer's place).
    assert hostile.resources()["backend fds"] == before["backend fds"] + served
    hostile.wait_flips()
    for sock in flood:
        sock.close()
    hostile.wait_resources(before)


def refused(sock: socket.socket) -> bool:
    """Closed by the server (a client it serves just sees no answer yet)."""
    sock.setblocking(False)
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def test_garbage_on_the_kbdif_page_and_a_notify_storm_close_that_keyboard_alone(
    hostile: Hostile,
) -> None:
    host = hostile.host
    before = hostile.resources()
    attacker = host.start_guest(guest("kbd", vkb=True), "hostile_agents:kbd_garbage")
    assert attacker.process.control.poll(PATIENCE)
    assert attacker.process.control.recv() == "sent"
    state = f"{xenbus.backend_path(0, vkb_config.KIND, attacker.domid, 0)}/{xenbus.FIELD_STATE}"
    wait_until(
        lambda: int(host.xs.read(state)) == xenbus.XenbusState.CLOSING,
        "the backend to close the keyboard",
    )
    hostile.wait_flips()
    attacker.process.kill()
    host.wait_guest_destroyed(attacker.domid, PATIENCE)
    hostile.wait_resources(before)


@pytest.mark.parametrize(
    ("record", "fds"),
    [
        pytest.param(b"\x00", 0, id="no-header"),
        pytest.param(HEADER.pack(1 << 30, 0) + b"{", 0, id="huge-length"),
        pytest.param(HEADER.pack(4, 0) + b"nope", 0, id="not-json"),
        pytest.param(HEADER.pack(2, 100) + b"{}", 100, id="descriptors"),
        pytest.param(HEADER.pack(13, 0) + b'{"op":"x"}   ', 0, id="unknown-op"),
    ],
)
def test_a_local_client_sending_garbage_on_the_planes_socket_costs_only_itself(
    hostile: Hostile, record: bytes, fds: int
) -> None:
    before = hostile.resources()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(str(hostile.host.planes_socket))
        sock.settimeout(PATIENCE)
        passed = [os.eventfd(0) for _ in range(fds)]
        sock.sendmsg([record], rights(passed))
        close_all(passed)
        answer = sock.recv(1 << 16)
        # An error answer to what can be framed, the door to the rest.
        assert answer == b"" or b'"error"' in answer
    hostile.wait_flips()
    hostile.wait_resources(before)


def test_a_backend_out_of_descriptors_answers_the_guest_and_serves_on(hostile: Hostile) -> None:
    """The backend's own limit met anyway (lowered under its feet, as a host with many
    guests at full budget would meet it): DBUF_CREATE answers an errno, the honest guest
    flips on, and once there is room again nothing is left of the refused requests."""
    host = hostile.host
    assert host.backend is not None
    backend = host.backend.pid
    before = hostile.resources()
    attacker = host.start_guest(guest("squeeze"), FLOOD, ("cue",))
    assert attacker.process.control.poll(PATIENCE)
    assert attacker.process.control.recv() == "connected"
    limit = resource.prlimit(backend, resource.RLIMIT_NOFILE)
    # Room for a few buffers more than the backend holds now.
    opened = len(os.listdir(f"/proc/{backend}/fd"))
    resource.prlimit(backend, resource.RLIMIT_NOFILE, (opened + 8, limit[1]))
    try:
        attacker.process.control.send("go")
        assert attacker.process.control.poll(PATIENCE)
        made, code = attacker.process.control.recv()
        assert made < DEFAULT_DESCRIPTOR_BUDGET // 3
        assert code in (errno.EMFILE, errno.ENOMEM)
        hostile.wait_flips()
    finally:
        resource.prlimit(backend, resource.RLIMIT_NOFILE, limit)
    attacker.process.kill()
    host.wait_guest_destroyed(attacker.domid, PATIENCE)
    hostile.wait_resources(before)
    hostile.wait_flips()


def test_fuzzed_displif_requests_are_each_answered_and_cost_nobody_else(
    hostile: Hostile,
) -> None:
    host = hostile.host
    before = hostile.resources()
    attacker = host.start_guest(guest("fuzz"), "hostile_agents:raw_guest")
    raw = Remote(attacker.process.control)
    assert raw("connect", 1) == xenbus.XenbusState.CONNECTED
    statuses = raw("fuzz", 3000, 16)
    assert sum(statuses.values()) == 3000  # every request answered
    assert set(statuses) - {0} <= {-errno.EINVAL, -errno.ENOENT, -errno.EEXIST, -errno.ENOMEM}
    hostile.wait_flips()
    attacker.process.kill()
    host.wait_guest_destroyed(attacker.domid, PATIENCE)
    hostile.wait_resources(before)


def test_the_benchs_honest_prober_keeps_nothing_of_operations_that_failed(
    hostile: Hostile,
) -> None:
    """`bench hostile` probes with honest_operations while an attack holds a budget; a
    framebuffer shared before its directory was refused must be given back, or every
    later probe starts short."""
    host = hostile.host
    prober = host.start_guest(guest("prober"), "hostile_agents:raw_guest")
    remote = Remote(prober.process.control)
    assert remote("connect", 1) == xenbus.XenbusState.CONNECTED
    held = host.hv.usage(prober.domid)
    fillers = 0
    with pytest.raises(OSError) as refused:
        while True:
            remote("share", f"filler{fillers}", 1)
            fillers += 1
    assert refused.value.errno == errno.ENOMEM
    remote("free", "filler0")  # room for the framebuffer's page, not its directory's
    assert remote("honest_operations", 1)[1] > 0
    for filler in range(1, fillers):
        remote("free", f"filler{filler}")
    assert host.hv.usage(prober.domid) == held
    prober.process.kill()
    host.wait_guest_destroyed(prober.domid, PATIENCE)


def test_what_a_dead_guest_held_is_released_with_no_further_request_from_anyone(
    hostile: Hostile,
) -> None:
    """The honest guest is stopped (SIGSTOP) while the attacker dies, so no request reaches
    the backend or the broker until everything the attacker held is back: its death alone
    must release it. (Before, the backend's release watches were closed at the next export,
    so a dead guest's descriptors stayed until some guest made a request.)"""
    host = hostile.host
    before = hostile.resources()
    attacker = host.start_guest(guest("flood-then-die"), FLOOD)
    assert attacker.process.control.poll(PATIENCE)
    made, code = attacker.process.control.recv()
    assert made > 0 and code == errno.ENOMEM
    honest = hostile.honest.process.pid
    os.kill(honest, signal.SIGSTOP)
    try:
        wait_until(lambda: stopped(honest), "the honest guest to stop")
        frames = hostile.frames()
        attacker.process.kill()
        host.wait_guest_destroyed(attacker.domid, PATIENCE)
        hostile.wait_resources(before)
        # Nothing new flipped meanwhile: no request came. The guest awaits each flip before
        # sending the next, so one it sent before it stopped may still have been in the
        # ring when `frames` was read, and the backend serves it whenever it gets to it.
        assert hostile.frames() - frames in (0, 1)
    finally:
        os.kill(honest, signal.SIGCONT)
    hostile.wait_flips()


def stopped(pid: int) -> bool:
    """The process is stopped (state T): the kernel has delivered its SIGSTOP."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"
