"""Grant tables between real domain processes: share, map, end, limits, isolation."""

import errno
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hv_actor import Actor, start_actors

from pvdisplay.hv import PAGE_SIZE, GrantTable, Hypervisor, HypervisorError, Mapping
from pvdisplay.hv.local.client import LocalGrants, LocalHypervisor
from pvdisplay.hv.local.launcher import DomainLauncher
from pvdisplay.hv.local.tables import Limits
from pvdisplay.ipc.memory import SharedMapping

pytestmark = pytest.mark.processes

# The local implementation satisfies the interface the display code is written against.
_conforms: tuple[
    Callable[[LocalHypervisor], Hypervisor],
    Callable[[LocalGrants], GrantTable],
    Callable[[SharedMapping], Mapping],
] = (lambda hv: hv, lambda grants: grants, lambda mapping: mapping)


@pytest.fixture
def host() -> Iterator[DomainLauncher]:
    with DomainLauncher() as running:
        yield running


def failing(actor: Actor, action: str, **kwargs: Any) -> int:
    """The errno an action fails with."""
    with pytest.raises(HypervisorError) as failure:
        actor(action, **kwargs)
    assert failure.value.errno is not None
    return failure.value.errno


def test_pages_written_by_one_domain_are_read_by_the_other(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="buf", domid=back.domid, pages=4)
    front("write", key="buf", offset=2 * PAGE_SIZE + 7, data=b"from the front")

    assert back("map", key="m", domid=front.domid, refs=refs) == 4 * PAGE_SIZE
    assert back("read", key="m", offset=2 * PAGE_SIZE + 7, length=14) == b"from the front"

    back("write", key="m", offset=5, data=b"and back")
    assert front("read", key="buf", offset=5, length=8) == b"and back"


def test_refs_are_distinct_and_never_zero(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="a", domid=back.domid, pages=3)
    refs += front("share", key="b", domid=back.domid, pages=3)
    assert 0 not in refs
    assert len(set(refs)) == 6


def test_a_mapping_follows_ref_order(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    front("alloc", key="mem", pages=4)
    for page in range(4):
        front("write", key="mem", offset=page * PAGE_SIZE, data=bytes([page + 1]))
    refs = front("grant", key="mem", domid=back.domid, pages=[3, 1, 0, 2])

    assert back("map", key="m", domid=front.domid, refs=refs[:2]) == 2 * PAGE_SIZE
    assert back("read", key="m", offset=0, length=1) == b"\x04"
    assert back("read", key="m", offset=PAGE_SIZE, length=1) == b"\x02"


def test_mapping_what_was_not_granted_fails_with_einval(host: DomainLauncher) -> None:
    front, back, other = start_actors(host, 3)
    refs = front("share", key="buf", domid=back.domid, pages=2)
    ended = front("share", key="gone", domid=back.domid, pages=1)
    front("end", refs=ended)
    readonly = front("share", key="ro", domid=back.domid, pages=1, ro=True)

    def map_fails(mapper: Actor, granter: Actor, refs: list[int]) -> int:
        return failing(mapper, "map", key="m", domid=granter.domid, refs=refs)

    assert map_fails(back, front, [999]) == errno.EINVAL  # never handed out
    assert map_fails(other, front, refs) == errno.EINVAL  # granted to someone else
    assert map_fails(back, other, refs) == errno.EINVAL  # refs are per granting domain
    assert map_fails(back, front, ended) == errno.EINVAL
    assert map_fails(back, front, readonly) == errno.EINVAL  # writable map of read-only
    assert map_fails(back, front, []) == errno.EINVAL
    assert failing(back, "end", refs=refs) == errno.EINVAL  # only the granter ends
    assert host.stats()["maps"] == 0


def test_a_read_only_grant_maps_read_only_and_a_write_faults(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="buf", domid=back.domid, pages=1, ro=True)
    front("write", key="buf", offset=0, data=b"constant")

    back("map", key="m", domid=front.domid, refs=refs, rw=False)
    assert back("read", key="m", offset=0, length=8) == b"constant"
    assert back("numpy_write", key="m") == "ValueError"

    back.domain.control.send(("poke", {"key": "m", "offset": 0}))
    assert back.domain.wait(30) == -signal.SIGSEGV
    assert front("read", key="buf", offset=0, length=8) == b"constant"


def test_ending_a_mapped_grant_is_deferred_until_unmap(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="buf", domid=back.domid, pages=3)
    back("map", key="m", domid=front.domid, refs=refs)

    assert front("end", refs=refs) == refs
    assert host.stats()["grants"] == 3
    assert failing(back, "map", key="again", domid=front.domid, refs=refs) == errno.EINVAL
    back("write", key="m", offset=0, data=b"still mapped")
    assert front("read", key="buf", offset=0, length=12) == b"still mapped"

    back("close", key="m")
    assert host.stats()["grants"] == 0
    assert host.usage(front.domid)["granted_pages"] == 0
    front("close", key="buf")
    assert host.stats()["allocations"] == 0


def test_freeing_memory_ends_its_grants(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="buf", domid=back.domid, pages=2)
    back("map", key="m", domid=front.domid, refs=refs)
    front("close", key="buf")
    assert (host.stats()["grants"], host.stats()["allocations"]) == (2, 1)

    back("close", key="m")
    stats = host.stats()
    assert (stats["grants"], stats["allocations"], stats["maps"]) == (0, 0, 0)


def test_close_refuses_while_an_array_still_views_the_mapping(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="buf", domid=back.domid, pages=1)
    back("map", key="m", domid=front.domid, refs=refs)
    assert back("close_with_view", key="m") == errno.EBUSY
    assert host.stats()["maps"] == 1
    back("close", key="m")
    assert host.stats()["maps"] == 0


def test_a_mapping_dropped_without_close_is_unmapped_at_the_next_call(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="buf", domid=back.domid, pages=1)
    back("map", key="m", domid=front.domid, refs=refs)
    back("drop", key="m")
    back("events", call="bind_unbound_port", args=(front.domid,))
    assert front("end", refs=refs) == []


def test_limits_fail_cleanly_with_the_drivers_errnos() -> None:
    limits = Limits(memory_pages=16, granted_pages=8, mapped_pages=4, event_channels=2)
    with DomainLauncher(limits=limits) as host:
        front, back = start_actors(host, 2)
        refs = front("share", key="buf", domid=back.domid, pages=8)
        with pytest.raises(HypervisorError) as failure:
            front("share", key="x", domid=back.domid, pages=1)
        # The guest is told the limit once, in the driver's words, not the broker's repr.
        assert str(failure.value) == (
            f"[Errno {errno.ENOSPC}] domain {front.domid} would have 9 grants (limit 8) [ENOSPC]"
        )
        assert failing(front, "alloc", key="x", pages=9) == errno.ENOMEM
        assert failing(back, "map", key="x", domid=front.domid, refs=refs[:5]) == errno.ENOMEM

        back("map", key="m", domid=front.domid, refs=refs[:4])
        assert failing(back, "map", key="x", domid=front.domid, refs=refs[4:5]) == errno.ENOMEM
        assert host.usage(back.domid)["mapped_pages"] == 4
        assert host.usage(front.domid) == {
            "memory_pages": 8,
            "granted_pages": 8,
            "mapped_pages": 0,
            "event_channels": 0,
            "descriptors": 1,
        }

        for _ in range(2):
            front("events", call="bind_unbound_port", args=(back.domid,))
        assert (
            failing(front, "events", call="bind_unbound_port", args=(back.domid,)) == errno.ENOSPC
        )


def test_a_domain_reaches_no_memory_that_was_not_granted_to_it(host: DomainLauncher) -> None:
    owner, grantee, bystander = start_actors(host, 3)
    secret = b"secret-" + bytes(range(32))
    owner("alloc", key="private", pages=8)
    owner("write", key="private", offset=3 * PAGE_SIZE, data=secret)
    refs = owner("share", key="public", domid=grantee.domid, pages=2)
    owner("write", key="public", offset=0, data=secret[:6])

    for ref in range(1, 64):
        if ref not in refs:
            assert failing(grantee, "map", key="probe", domid=owner.domid, refs=[ref])
    grantee("map", key="m", domid=owner.domid, refs=refs)

    # Bypassing the API, the grantee reaches exactly the object it was granted, whose
    # first bytes match the secret's prefix; the bystander reaches nothing.
    assert grantee("scan_memory", needle=secret) == [(2 * PAGE_SIZE, False)]
    assert grantee("scan_memory", needle=secret[:6]) == [(2 * PAGE_SIZE, True)]
    assert bystander("scan_memory", needle=secret) == []
    assert owner("scan_memory", needle=secret) == [(2 * PAGE_SIZE, False), (8 * PAGE_SIZE, True)]


def test_a_grant_covers_whole_memory_objects_so_no_ungranted_page_is_reached(
    host: DomainLauncher,
) -> None:
    # The broker isolates memory objects, not pages: a grant of part of one would hand
    # the grantee a descriptor for the rest.
    owner, grantee = start_actors(host, 2)
    owner("alloc", key="mem", pages=4)
    owner("write", key="mem", offset=3 * PAGE_SIZE, data=b"ungranted page")
    for pages in ([0], [0, 1, 2], [3, 2, 1, 1]):
        assert failing(owner, "grant", key="mem", domid=grantee.domid, pages=pages) == (
            errno.EINVAL
        )
    assert host.stats()["grants"] == 0

    owner("alloc", key="public", pages=1)
    owner("write", key="public", offset=0, data=b"granted page")
    refs = owner("grant", key="public", domid=grantee.domid, pages=[0])
    assert grantee("map", key="m", domid=owner.domid, refs=refs) == PAGE_SIZE

    # Bypassing the API, the grantee reaches the granted object and nothing else.
    assert grantee("scan_memory", needle=b"ungranted page") == [(PAGE_SIZE, False)]
    assert grantee("scan_memory", needle=b"granted page") == [(PAGE_SIZE, True)]
