"""Event channels between real domain processes: eventfds written straight to the peer."""

import errno
import os
import signal
from collections.abc import Callable, Iterator

import pytest
from hv_actor import Actor, start_actors

from pvdisplay.hv import EventChannels, HypervisorError
from pvdisplay.hv.local.client import LocalEvents
from pvdisplay.hv.local.launcher import DomainLauncher

pytestmark = pytest.mark.processes

_conforms: Callable[[LocalEvents], EventChannels] = lambda events: events  # noqa: E731


@pytest.fixture
def host() -> Iterator[DomainLauncher]:
    with DomainLauncher() as running:
        yield running


def connect(front: Actor, back: Actor) -> tuple[int, int]:
    """Back offers a port to front, front binds it: (back's port, front's port)."""
    offered = back("events", call="bind_unbound_port", args=(front.domid,))
    bound = front("events", call="bind_interdomain", args=(back.domid, offered))
    return offered, bound


def failing(actor: Actor, call: str, *args: object) -> int | None:
    with pytest.raises(HypervisorError) as failure:
        actor("events", call=call, args=args)
    return failure.value.errno


def test_notifications_cross_processes_both_ways(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    back_port, front_port = connect(front, back)

    front("events", call="notify", args=(front_port,))
    assert back("events", call="pending", args=(30,)) == [back_port]
    back("events", call="notify", args=(back_port,))
    assert front("events", call="pending", args=(30,)) == [front_port]

    assert back("events", call="status", args=(back_port,)) == (
        "interdomain",
        front.domid,
        front_port,
    )
    assert front("events", call="status", args=(front_port,)) == (
        "interdomain",
        back.domid,
        back_port,
    )


def test_notifications_do_not_go_through_the_broker(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    back_port, front_port = connect(front, back)
    os.kill(host.broker_pid, signal.SIGSTOP)
    try:
        front("events", call="notify", args=(front_port,))
        assert back("events", call="pending", args=(30,)) == [back_port]
        back("events", call="notify", args=(back_port,))
        assert front("events", call="pending", args=(30,)) == [front_port]
    finally:
        os.kill(host.broker_pid, signal.SIGCONT)


def test_notifications_coalesce_like_a_pending_bit(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    back_port, front_port = connect(front, back)
    for _ in range(3):
        front("events", call="notify", args=(front_port,))
    assert back("events", call="pending", args=(30,)) == [back_port]
    assert back("events", call="pending", args=(0,)) == []


def test_pending_times_out_empty(host: DomainLauncher) -> None:
    (lonely,) = start_actors(host, 1)
    assert lonely("events", call="pending", args=(0.05,)) == []


def test_fileno_wakes_selectors_and_asyncio(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    back_port, front_port = connect(front, back)
    front("events", call="notify", args=(front_port,))
    assert back("wait_fileno", timeout=30) == [back_port]
    front("events", call="notify", args=(front_port,))
    assert back("wait_asyncio", timeout=30) == [back_port]


def test_binding_and_notifying_fail_with_the_drivers_errnos(host: DomainLauncher) -> None:
    front, back, other = start_actors(host, 3)
    offered = back("events", call="bind_unbound_port", args=(front.domid,))
    assert failing(other, "bind_interdomain", back.domid, offered) == errno.EINVAL
    assert failing(front, "bind_interdomain", back.domid, offered + 1) == errno.EINVAL
    assert failing(front, "bind_interdomain", 999, offered) == errno.ESRCH
    front("events", call="bind_interdomain", args=(back.domid, offered))
    assert failing(front, "bind_interdomain", back.domid, offered) == errno.EINVAL  # taken
    assert failing(front, "notify", 77) == errno.ENOTCONN
    assert failing(front, "unbind", 77) == errno.ENOTCONN


def test_an_unbound_port_gets_its_peer_when_the_peer_binds(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    offered = back("events", call="bind_unbound_port", args=(front.domid,))
    assert back("events", call="status", args=(offered,)) == ("unbound", front.domid, None)
    back("events", call="notify", args=(offered,))  # dropped, as Xen does while unbound
    bound = front("events", call="bind_interdomain", args=(back.domid, offered))
    assert front("events", call="pending", args=(0,)) == []

    back("events", call="notify", args=(offered,))
    assert front("events", call="pending", args=(30,)) == [bound]


def test_the_peer_sees_an_unbind_and_may_bind_again(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    back_port, front_port = connect(front, back)
    front("events", call="unbind", args=(front_port,))

    assert back("events", call="pending", args=(30,)) == [back_port]
    assert back("events", call="status", args=(back_port,)) == ("unbound", front.domid, None)
    back("events", call="notify", args=(back_port,))  # silently dropped

    again = front("events", call="bind_interdomain", args=(back.domid, back_port))
    back("events", call="notify", args=(back_port,))
    assert front("events", call="pending", args=(30,)) == [again]


def test_the_peer_sees_a_domain_die(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    back_port, _ = connect(front, back)
    front.domain.kill()
    assert back("events", call="pending", args=(30,)) == [back_port]
    assert back("events", call="status", args=(back_port,)) == ("unbound", front.domid, None)
    assert host.wait_released(front.domid, 30)
    assert host.stats()["ports"] == 1
