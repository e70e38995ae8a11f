"""Attacks on the hypervisor broker from a guest domain: every descriptor it makes the
broker hold is counted against its budget, and exhaustion is an errno, never a crash."""

import errno
import resource
import signal
import struct
from collections.abc import Iterator

import pytest
from hostile_agents import Remote
from hostile_world import Hostile, world

from pvdisplay.hv import HypervisorError
from pvdisplay.hv.local.tables import Limits
from rigs import PATIENCE

pytestmark = pytest.mark.processes

ATTACKER = "hostile_agents:agent"
MOST = 50_000
"""More than the broker's descriptor table holds (20,000 here before the budgets)."""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    with world(tmp_path_factory.mktemp("hostile")) as running:
        yield running


def test_a_guest_sharing_in_a_loop_gets_enomem_and_nobody_else_notices(hostile: Hostile) -> None:
    host = hostile.host
    before = hostile.resources()
    attacker_domain = host.hv.start_domain(ATTACKER)
    attacker = Remote(attacker_domain.control)
    bystander_domain = host.hv.start_domain(ATTACKER)
    bystander = Remote(bystander_domain.control)

    shared, code = attacker("share_until_refused", 0, MOST)
    # gntalloc's answer when it cannot make another grant, after exactly the budget.
    assert (shared, code) == (Limits().descriptors, errno.ENOMEM)
    ports, code = attacker("bind_until_refused", 0, MOST)
    assert (ports, code) == (0, errno.ENOSPC)
    assert host.hv.usage(attacker_domain.domid)["descriptors"] == Limits().descriptors

    # Another guest still shares, the broker still answers the host, the honest guest flips.
    assert bystander("share_one", 0) == 1
    assert host.hv.stats()["domains"] == 4
    hostile.wait_flips()

    for domain in (attacker_domain, bystander_domain):
        domain.kill()
        domain.wait()
        assert host.hv.wait_released(domain.domid, PATIENCE)
    hostile.wait_resources(before)
    hostile.wait_flips()


HEADER = struct.Struct("<II")


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([(b"\x00\x01", 0)], id="no-header"),
        pytest.param([(HEADER.pack(5, 0) + b"hello", 0)], id="not-json"),
        pytest.param([(HEADER.pack(2, 0) + b"[]", 0)], id="not-an-object"),
        pytest.param([(HEADER.pack(1 << 30, 0) + b"{", 0)], id="huge-length"),
        pytest.param([(HEADER.pack(2, 100_000) + b"{}", 0)], id="huge-fd-count"),
        pytest.param([(HEADER.pack(2, 500) + b"{}", 250), (b"+", 250)], id="500-fds"),
        pytest.param([(HEADER.pack(2, 250) + b"{", 250), (b"x", 0)], id="bad-continuation"),
    ],
)
def test_a_guest_that_breaks_the_framing_is_killed_and_leaves_nothing(
    hostile: Hostile, records: list[tuple[bytes, int]]
) -> None:
    host = hostile.host
    before = hostile.resources()
    domain = host.hv.start_domain(ATTACKER)
    # No answer to wait for: the broker may kill it before it could give one.
    domain.control.send(("send_records", (records,)))
    assert domain.wait(PATIENCE) == -signal.SIGKILL  # as a backend closes a frontend
    assert host.hv.wait_released(domain.domid, PATIENCE)
    hostile.wait_resources(before)
    hostile.wait_flips()


def test_a_guest_that_half_sends_a_request_holds_at_most_one_record_of_descriptors(
    hostile: Hostile,
) -> None:
    host = hostile.host
    before = hostile.resources()
    domain = host.hv.start_domain(ATTACKER)
    attacker = Remote(domain.control)
    attacker("send_records", [(HEADER.pack(3, 250) + b"{", 250)])  # the rest never comes
    # Its socket and pidfd, and the one record's descriptors at most.
    assert host.hv.stats()["fds"] <= before["broker fds"] + 2 + 250
    hostile.wait_flips()
    domain.kill()
    domain.wait()
    assert host.hv.wait_released(domain.domid, PATIENCE)
    hostile.wait_resources(before)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"op": "no-such-op"}, errno.ENOSYS),
        ({"op": 7}, errno.ENOSYS),
        ({"op": "share", "domid": 0, "pages": -1, "readonly": False}, errno.EINVAL),
        ({"op": "map", "domid": 0, "refs": "!!!", "writable": True}, errno.EINVAL),
        ({"op": "import", "domid": 0, "readonly": False, "segments": [[0, 0, 1]]}, errno.EINVAL),
    ],
)
def test_requests_with_bad_fields_get_their_errno(
    hostile: Hostile, body: dict[str, object], code: int
) -> None:
    domain = hostile.host.hv.start_domain(ATTACKER)
    attacker = Remote(domain.control)
    with pytest.raises(OSError) as failure:
        attacker("request", body)
    assert failure.value.errno == code
    assert attacker("share_one", 0) == 1  # and it is served on
    domain.kill()
    domain.wait()


def test_a_broker_out_of_descriptors_answers_emfile_and_serves_on(hostile: Hostile) -> None:
    """The process limit met anyway (here: lowered under the broker's feet, as a host
    with many domains at full budget would meet it): every request that needs a
    descriptor is answered EMFILE, the host's too, and the broker lives."""
    host = hostile.host
    before = hostile.resources()
    domain = host.hv.start_domain(ATTACKER)
    attacker = Remote(domain.control)
    broker = host.hv.broker_pid
    limit = resource.prlimit(broker, resource.RLIMIT_NOFILE)
    resource.prlimit(broker, resource.RLIMIT_NOFILE, (before["broker fds"] + 4, limit[1]))
    try:
        shared, code = attacker("share_until_refused", 0, MOST)
        assert shared < 4
        assert code == errno.EMFILE
        with pytest.raises(HypervisorError) as failure:
            host.hv.stats()  # lists /proc/self/fd: one more descriptor
        assert failure.value.errno == errno.EMFILE
    finally:
        resource.prlimit(broker, resource.RLIMIT_NOFILE, limit)
    assert attacker("share_one", 0) > 0  # served on
    hostile.wait_flips()
    domain.kill()
    domain.wait()
    assert host.hv.wait_released(domain.domid, PATIENCE)
    hostile.wait_resources(before)


def test_a_reply_whose_descriptors_the_domain_had_no_room_for_is_undone(
    hostile: Hostile,
) -> None:
    """A domain out of descriptors loses a map reply's memfds (MSG_CTRUNC): the call fails
    with EMFILE and the mapping the broker made for it is given back with the next call,
    instead of staying charged to the domain for the rest of its life."""
    host = hostile.host
    before = hostile.resources()
    domain = host.hv.start_domain(ATTACKER)
    attacker = Remote(domain.control)
    refs = [attacker("share_one", domain.domid) for _ in range(5)]
    maps = host.hv.stats()["maps"]
    attacker("limit_descriptors", 2)
    with pytest.raises(OSError) as failure:
        attacker("map_refs", domain.domid, refs)
    assert failure.value.errno == errno.EMFILE
    attacker("unlimit_descriptors")
    attacker("share_one", 0)  # the next call carries the unmap
    assert host.hv.stats()["maps"] == maps
    assert host.hv.usage(domain.domid)["mapped_pages"] == 0
    domain.kill()
    domain.wait()
    assert host.hv.wait_released(domain.domid, PATIENCE)
    hostile.wait_resources(before)
