"""Attacks on the hypervisor broker from a guest domain: every descriptor it makes the
broker hold is counted against its budget, and exhaustion is an errno, never a crash."""

import errno
from collections.abc import Iterator

import pytest
from hostile_agents import Remote
from hostile_world import Hostile, world

from pvdisplay.hv.local.tables import Limits

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
        assert host.hv.wait_released(domain.domid, 10.0)
    hostile.wait_resources(before)
    hostile.wait_flips()
