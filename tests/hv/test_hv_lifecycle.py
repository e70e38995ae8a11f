"""Domain death and resource hygiene: nothing the broker or a domain holds may leak."""

import errno
import signal

import pytest
from hv_actor import Actor, start_actors
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.hv import PAGE_SIZE, HypervisorError
from pvdisplay.hv.local.launcher import DomainLauncher
from pvdisplay.ipc import framing

pytestmark = pytest.mark.processes

EMPTY_TABLES = {
    "domains": 0,
    "allocations": 0,
    "grants": 0,
    "maps": 0,
    "exports": 0,
    "imports": 0,
    "ports": 0,
    "descriptors": 0,
}


def tables(host: DomainLauncher) -> dict[str, int]:
    stats = host.stats()
    del stats["fds"]
    return stats


def test_a_domain_killed_mid_mapping_leaves_nothing_behind() -> None:
    released: list[tuple[int, int]] = []
    hosts: list[DomainLauncher] = []

    def on_released(domid: int) -> None:
        # The hook may call back into the host, and the broker is done with the domain.
        released.append((domid, hosts[0].stats()["domains"]))

    with DomainLauncher(on_domain_released=on_released) as host:
        hosts.append(host)
        idle_fds = host.stats()["fds"]
        front, back = start_actors(host, 2)
        refs = front("share", key="fb", domid=back.domid, pages=64)
        port = front("events", call="bind_unbound_port", args=(back.domid,))
        back("events", call="bind_interdomain", args=(front.domid, port))
        back("export", key="h", domid=front.domid, refs=refs)
        back("map", key="held", domid=front.domid, refs=refs)
        assert back("map_forever", domid=front.domid, refs=refs) == "looping"

        back.domain.kill(signal.SIGKILL)
        assert back.domain.wait(30) == -signal.SIGKILL
        assert host.wait_released(back.domid, 30)
        assert released == [(back.domid, 1)]

        # Its mappings and export are gone, so the granter can end at once; its port
        # end is closed and the granter's end turned unbound.
        assert front("end", refs=refs) == []
        assert front("events", call="status", args=(port,)) == ("unbound", back.domid, None)
        front("close", key="fb")
        front("events", call="unbind", args=(port,))
        assert tables(host) == EMPTY_TABLES | {"domains": 1}

        front.domain.kill()
        assert host.wait_released(front.domid, 30)
        assert tables(host) == EMPTY_TABLES
        assert host.stats()["fds"] == idle_fds


def test_pages_mapped_from_a_dead_domain_stay_valid_until_unmapped() -> None:
    with DomainLauncher() as host:
        front, back = start_actors(host, 2)
        refs = front("share", key="fb", domid=back.domid, pages=2)
        front("write", key="fb", offset=PAGE_SIZE, data=b"last words")
        back("map", key="m", domid=front.domid, refs=refs)

        front.domain.kill()
        assert host.wait_released(front.domid, 30)
        assert back("read", key="m", offset=PAGE_SIZE, length=10) == b"last words"
        back("write", key="m", offset=0, data=b"still writable")
        assert back("read", key="m", offset=0, length=14) == b"still writable"
        with pytest.raises(HypervisorError) as failure:
            back("map", key="again", domid=front.domid, refs=refs)
        assert failure.value.errno == errno.EINVAL
        assert (host.stats()["grants"], host.stats()["allocations"]) == (2, 1)

        back("close", key="m")
        assert tables(host) == EMPTY_TABLES | {"domains": 1}


def test_a_restarted_domain_0_grants_afresh_while_its_old_grants_are_mapped() -> None:
    with DomainLauncher() as host:
        old = Actor(host.start_domain("hv_actor:actor", domid=0))
        (guest,) = start_actors(host, 1)
        old_refs = old("share", key="fb", domid=guest.domid, pages=2)
        old("write", key="fb", offset=0, data=b"old backend")
        guest("map", key="old", domid=0, refs=old_refs)
        old.domain.kill()
        assert host.wait_released(0, 30)

        new = Actor(host.start_domain("hv_actor:actor", domid=0))
        new_refs = new("share", key="fb", domid=guest.domid, pages=1)
        assert new_refs == old_refs[:1]  # the same number, in the new domain's own table
        new("write", key="fb", offset=0, data=b"new backend")
        with pytest.raises(HypervisorError) as stale:
            guest("map", key="stale", domid=0, refs=old_refs[1:])
        assert stale.value.errno == errno.EINVAL
        assert guest("read", key="old", offset=0, length=11) == b"old backend"
        guest("close", key="old")

        guest("map", key="new", domid=0, refs=new_refs)
        assert guest("read", key="new", offset=0, length=11) == b"new backend"
        guest("close", key="new")
        assert host.usage(0) == {
            "memory_pages": 1,
            "granted_pages": 1,
            "mapped_pages": 0,
            "event_channels": 0,
            "descriptors": 1,
        }
        assert new("end", refs=new_refs) == []
        new("close", key="fb")
        assert tables(host) == EMPTY_TABLES | {"domains": 2}


def test_a_thousand_map_and_export_cycles_grow_nothing() -> None:
    with DomainLauncher() as host:
        front, back = start_actors(host, 2)
        refs = front("share", key="fb", domid=back.domid, pages=16)
        back("cycle_map", domid=front.domid, refs=refs, count=20)
        back("cycle_export", domid=front.domid, refs=refs, count=20)
        process_before = back("process_stats")
        broker_before = host.stats()

        back("cycle_map", domid=front.domid, refs=refs, count=1000)
        back("cycle_export", domid=front.domid, refs=refs, count=1000)

        process_after = back("process_stats")
        assert process_after["fds"] == process_before["fds"]
        assert process_after["mappings"] == process_before["mappings"]
        assert process_after["rss_anon_kb"] - process_before["rss_anon_kb"] < 2048
        assert host.stats() == broker_before
        assert host.usage(back.domid)["mapped_pages"] == 0


def test_a_domain_that_breaks_the_framing_is_killed() -> None:
    with DomainLauncher() as host:
        rogue, bystander = start_actors(host, 2)
        rogue("alloc", key="mem", pages=1)
        rogue.domain.control.send(("break_framing", {}))
        assert rogue.domain.wait(30) == -signal.SIGKILL
        assert host.wait_released(rogue.domid, 30)
        assert bystander("events", call="bind_unbound_port", args=(rogue.domid,)) == 1
        assert host.stats()["allocations"] == 0


domids = st.integers(0, 3)
small = st.integers(0, 12)
packed = st.lists(st.integers(0, 6), max_size=4).map(framing.pack_u32s)
WELL_FORMED: dict[str, dict[str, st.SearchStrategy[object]]] = {
    "alloc": {"pages": st.integers(1, 4)},
    "share": {"domid": domids, "pages": st.integers(1, 4), "readonly": st.booleans()},
    "free": {"alloc": small},
    "grant": {"domid": domids, "alloc": small, "pages": packed, "readonly": st.booleans()},
    "end": {"refs": packed},
    "map": {"domid": domids, "refs": packed, "writable": st.booleans()},
    "unmap": {"map": small},
    "export": {"domid": domids, "refs": packed, "writable": st.booleans()},
    "import": {"domid": domids, "readonly": st.booleans(), "segments": st.just([[0, 0, 1]])},
    "release": {"id": st.text(max_size=32)},
    "evtchn_unbound": {"domid": domids},
    "evtchn_bind": {"domid": domids, "port": small},
    "evtchn_unbind": {"port": small},
    "nonsense": {},
}
garbage = st.dictionaries(
    st.sampled_from(["domid", "pages", "alloc", "refs", "readonly", "map", "port", "id"]),
    st.one_of(st.integers(-2, 2**33), st.booleans(), st.none(), st.text(max_size=8)),
    max_size=2,
)
requests = st.sampled_from(sorted(WELL_FORMED)).flatmap(
    lambda op: st.tuples(st.just(op), st.fixed_dictionaries(WELL_FORMED[op]), garbage)
)


def test_the_broker_answers_any_request_and_leaks_nothing() -> None:
    with DomainLauncher() as host:
        idle_fds = host.stats()["fds"]
        fuzzer, bystander = start_actors(host, 2)
        bystander("share", key="buf", domid=fuzzer.domid, pages=2)

        @settings(max_examples=300, deadline=None, database=None)
        @given(requests, st.booleans())
        def any_request(
            request: tuple[str, dict[str, object], dict[str, object]], spoil: bool
        ) -> None:
            op, fields, bad_fields = request
            try:
                fuzzer("raw_call", body={**fields, **(bad_fields if spoil else {}), "op": op})
            except HypervisorError as exc:
                assert exc.errno != errno.EIO, exc  # every failure has a real errno

        any_request()
        assert fuzzer.domain.returncode is None
        assert bystander("read", key="buf", offset=0, length=1) == b"\0"
        for actor in (fuzzer, bystander):
            actor.domain.kill()
            assert host.wait_released(actor.domid, 30)
        assert tables(host) == EMPTY_TABLES
        assert host.stats()["fds"] == idle_fds


def test_a_domain_that_exits_is_released() -> None:
    with DomainLauncher() as host:
        (leaving,) = start_actors(host, 1)
        leaving.domain.control.send(("exit", {"code": 3}))
        assert leaving.domain.wait(30) == 3
        assert host.wait_released(leaving.domid, 30)
        assert tables(host) == EMPTY_TABLES


def test_a_domain_id_is_reused_only_after_its_domain_is_destroyed() -> None:
    with DomainLauncher() as host:
        first = Actor(host.start_domain("hv_actor:actor", domid=7))
        with pytest.raises(HypervisorError) as refused:
            host.start_domain("hv_actor:actor", domid=7)
        assert refused.value.errno == errno.EEXIST
        first.domain.kill(signal.SIGKILL)
        assert host.wait_released(7, 30)
        again = Actor(host.start_domain("hv_actor:actor", domid=7))
        assert again("share", key="fb", domid=0, pages=1) == [1]
