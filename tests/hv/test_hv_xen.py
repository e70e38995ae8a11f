"""pvdisplay.hv.xen without a hypervisor: the adapters' bookkeeping over stand-in devices.

The Xen devices are character devices driven by ioctls; here memfds stand in for the
pages they map (gntalloc's own pages, another domain's pages behind gntdev), and a
fake ioctl fills in what the kernel would (offsets, refs, ports), so everything but
the hypervisor itself runs: the swapping of guest memory under live views, loopback
grants, exports sent to another process, event ports read and unmasked. Tests that
need /dev/xen are at the end and are skipped unless this is a Xen domain (the Xen
test rig runs them).
"""

import asyncio
import errno
import gc
import mmap
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvdisplay.hv import (
    PAGE_SIZE,
    BufferHandle,
    Buffers,
    ChannelStatus,
    EventChannels,
    GrantTable,
    GuestMemory,
    Hypervisor,
    HypervisorError,
    Mapping,
    PortState,
)
from pvdisplay.hv.xen import abi, device, open_hypervisor
from pvdisplay.hv.xen.buffers import XenBuffer, XenBuffers
from pvdisplay.hv.xen.events import XenEventChannels
from pvdisplay.hv.xen.grants import LOOPBACK_REF_BASE, XenGrantTable
from pvdisplay.hv.xen.hypervisor import XenHypervisor, is_control_domain, own_domid
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.memory import Segment, create_memfd
from pvdisplay.store.client import Client
from pvdisplay.store.server import XenStoreServer

OWN = 3
PEER = 7
FOREIGN_PAGES = 16


@dataclass
class FakeXen:
    """What the kernel and Xen would do for the ioctls the adapters make."""

    foreign: int = field(default_factory=lambda: create_memfd(FOREIGN_PAGES, "foreign"))
    """Domain PEER's pages: ref r is page r (gntdev's offset for a mapping is r's page)."""
    allocations: list[tuple[int, int, bool, list[int]]] = field(default_factory=list)
    """(a duplicate of the gntalloc stand-in, domid, writable, refs) per ALLOC_GREF."""
    unmapped: list[tuple[int, int]] = field(default_factory=list)
    next_ref: int = 100

    def open_gntalloc(self) -> int:
        return create_memfd(FOREIGN_PAGES, "gntalloc")

    def open_gntdev(self) -> int:
        return os.dup(self.foreign)

    def call(self, fd: int, request: int, argument: bytearray | int) -> int:
        assert isinstance(argument, bytearray)
        if request == abi.IOCTL_GNTALLOC_ALLOC_GREF:
            domid, flags, count, _, _ = abi.GNTALLOC_ALLOC_GREF.unpack(argument)
            if count > FOREIGN_PAGES:
                raise HypervisorError(errno.ENOSPC, "over the gntalloc limit")
            refs = list(range(self.next_ref, self.next_ref + count))
            self.next_ref += count
            struct.pack_into("<Q", argument, abi.GNTALLOC_ALLOC_GREF.fields["index"].offset, 0)
            struct.pack_into(
                f"<{count}I", argument, abi.GNTALLOC_ALLOC_GREF.fields["gref_ids[0]"].offset, *refs
            )
            self.allocations.append((os.dup(fd), domid, bool(flags), refs))
            return 0
        if request == abi.IOCTL_GNTDEV_MAP_GRANT_REF:
            count = abi.GNTDEV_MAP_GRANT_REF.unpack(argument)[0]
            pairs = struct.unpack_from(f"<{2 * count}I", argument, 16)
            refs = list(pairs[1::2])
            assert set(pairs[0::2]) == {PEER}
            if refs != list(range(refs[0], refs[0] + count)) or refs[-1] >= FOREIGN_PAGES:
                raise HypervisorError(errno.EINVAL, "not granted")
            index = refs[0] * PAGE_SIZE
            struct.pack_into("<Q", argument, abi.GNTDEV_MAP_GRANT_REF.fields["index"].offset, index)
            return 0
        if request == abi.IOCTL_GNTDEV_UNMAP_GRANT_REF:
            index, count, _ = abi.GNTDEV_UNMAP_GRANT_REF.unpack(argument)
            self.unmapped.append((index, count))
            return 0
        raise HypervisorError(errno.ENOTTY, f"unexpected ioctl {request:#x}")

    def gntalloc_bytes(self, allocation: int, length: int) -> bytes:
        return os.pread(self.allocations[allocation][0], length, 0)

    def close(self) -> None:
        os.close(self.foreign)
        for fd, *_ in self.allocations:
            os.close(fd)


@pytest.fixture
def xen() -> Iterator[FakeXen]:
    fake = FakeXen()
    os.pwrite(fake.foreign, bytes(range(256)) * (FOREIGN_PAGES * PAGE_SIZE // 256), 0)
    yield fake
    fake.close()


@pytest.fixture
def table(xen: FakeXen) -> Iterator[XenGrantTable]:
    grants = XenGrantTable(OWN, xen.open_gntdev(), xen.open_gntalloc, xen.call)
    yield grants
    grants.close()


@pytest.fixture
def buffers(xen: FakeXen, table: XenGrantTable) -> Iterator[XenBuffers]:
    exports = XenBuffers(OWN, table, xen.open_gntdev)
    yield exports
    exports.close()


# -- grants ----------------------------------------------------------------------------


def test_a_grant_moves_the_contents_under_live_views(xen: FakeXen, table: XenGrantTable) -> None:
    memory = table.alloc(2)
    view = memory.view()
    view[:5] = b"hello"
    refs = table.grant(PEER, memory, [0, 1])
    assert refs == xen.allocations[0][3] and xen.allocations[0][1:3] == (PEER, True)
    assert bytes(view[:5]) == b"hello" and xen.gntalloc_bytes(0, 5) == b"hello"
    view[0] = ord("J")
    assert xen.gntalloc_bytes(0, 5) == b"Jello", "writes after the grant reach granted pages"
    assert table.end_access(refs) == []
    view[1] = ord("E")
    assert bytes(view[:5]) == b"JEllo"
    assert xen.gntalloc_bytes(0, 5) == b"Jello", "after end_access the grant has other pages"
    view.release()
    memory.close()


def test_readonly_grants_ask_gntalloc_for_no_write_access(
    xen: FakeXen, table: XenGrantTable
) -> None:
    memory, _ = table.share(PEER, 1, readonly=True)
    assert xen.allocations[0][2] is False
    memory.close()


def test_a_page_is_granted_to_one_domain_at_a_time(table: XenGrantTable) -> None:
    memory = table.alloc(1)
    refs = table.grant(PEER, memory, [0])
    with pytest.raises(HypervisorError) as busy:
        table.grant(PEER + 1, memory, [0])
    assert busy.value.errno == errno.EBUSY
    table.end_access(refs)
    table.grant(PEER + 1, memory, [0])
    memory.close()


def test_grants_cover_whole_allocations(table: XenGrantTable) -> None:
    memory = table.alloc(2)
    with pytest.raises(HypervisorError) as partial:
        table.grant(PEER, memory, [0])
    assert partial.value.errno == errno.EINVAL
    refs = table.grant(PEER, memory, [0, 1])
    with pytest.raises(HypervisorError) as half:
        table.end_access(refs[:1])
    assert half.value.errno == errno.EINVAL
    with pytest.raises(HypervisorError) as unknown:
        table.end_access([refs[-1] + 1000])
    assert unknown.value.errno == errno.EINVAL
    memory.close()
    with pytest.raises(HypervisorError) as gone:
        table.end_access(refs)
    assert gone.value.errno == errno.EINVAL, "closing the memory ended its grant"


def test_the_kernels_errno_comes_through(table: XenGrantTable) -> None:
    with pytest.raises(HypervisorError) as full:
        table.share(PEER, FOREIGN_PAGES + 1)
    assert full.value.errno == errno.ENOSPC


def test_closing_memory_with_a_live_view_is_refused(table: XenGrantTable) -> None:
    memory, _ = table.share(PEER, 1)
    array = memory.array()
    with pytest.raises(HypervisorError) as busy:
        memory.close()
    assert busy.value.errno == errno.EBUSY
    del array
    memory.close()


def test_memory_dropped_unclosed_gives_its_descriptor_back(table: XenGrantTable) -> None:
    before = len(os.listdir("/proc/self/fd"))
    memory = table.alloc(1)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    del memory
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_loopback_grants_reach_the_memory_itself(table: XenGrantTable) -> None:
    memory, refs = table.share(OWN, 2)
    assert min(refs) >= LOOPBACK_REF_BASE
    memory.view()[PAGE_SIZE : PAGE_SIZE + 3] = b"abc"
    with table.map(OWN, refs[1:], writable=False) as mapping, mapping.view() as view:
        assert bytes(view[:3]) == b"abc"
    readonly = table.grant(OWN, memory, [0, 1], readonly=True)
    with pytest.raises(HypervisorError) as denied:
        table.map(OWN, readonly, writable=True)
    assert denied.value.errno == errno.EACCES
    assert table.end_access(refs + readonly) == []
    with pytest.raises(HypervisorError):
        table.map(OWN, refs)
    memory.close()


def test_mapping_another_domains_refs_and_unmapping(xen: FakeXen, table: XenGrantTable) -> None:
    mapping = table.map(PEER, [3, 4])
    assert mapping.length == 2 * PAGE_SIZE
    with mapping.view() as view:
        assert view[:4] == bytes(range(4))
    mapping.close()
    assert xen.unmapped == [(3 * PAGE_SIZE, 2)]
    forgotten = table.map(PEER, [5])
    del forgotten
    gc.collect()
    assert xen.unmapped[-1] == (5 * PAGE_SIZE, 1), "a collected mapping is unmapped too"
    with pytest.raises(HypervisorError) as bad:
        table.map(PEER, [FOREIGN_PAGES])
    assert bad.value.errno == errno.EINVAL


# -- buffers ---------------------------------------------------------------------------


def _passed_through_a_socket(handle: BufferHandle) -> SharedBuffer:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with left, right:
        handle.send(left)
        return SharedBuffer.receive(right)


def test_an_export_of_foreign_refs_maps_anew_for_each_user(
    xen: FakeXen, buffers: XenBuffers
) -> None:
    handle = buffers.export_from_refs(PEER, [2, 3], writable=False)
    assert isinstance(handle, XenBuffer) and handle.readonly and handle.pages == 2
    copy = _passed_through_a_socket(handle)
    assert copy.id == handle.id and copy.readonly
    with copy.map() as mapping, mapping.view() as view:
        assert view[:2] == bytes(range(2))
    with handle.map() as own, own.view() as view:
        assert view[PAGE_SIZE : PAGE_SIZE + 2] == bytes(range(2))
    with pytest.raises(HypervisorError) as denied:
        handle.map(writable=True)
    assert denied.value.errno == errno.EACCES
    with pytest.raises(HypervisorError) as held:
        buffers.wait_released(handle.id, 0)
    assert held.value.errno == errno.ETIMEDOUT
    handle.close()
    with pytest.raises(HypervisorError) as still:
        buffers.wait_released(handle.id, 0)
    assert still.value.errno == errno.ETIMEDOUT, "the received copy still holds it"
    copy.close()
    buffers.wait_released(handle.id, 0)
    assert (2 * PAGE_SIZE, 2) in xen.unmapped


def test_an_export_of_refs_nobody_granted_fails_at_once(buffers: XenBuffers) -> None:
    with pytest.raises(HypervisorError) as bad:
        buffers.export_from_refs(PEER, [FOREIGN_PAGES + 1])
    assert bad.value.errno == errno.EINVAL


def test_an_export_of_own_memory_is_its_own_pages(
    table: XenGrantTable, buffers: XenBuffers
) -> None:
    memory = table.alloc(2)
    refs = table.grant(OWN, memory, [0, 1], readonly=True)
    handle = buffers.export_from_refs(OWN, refs, writable=False)
    table.end_access(refs)
    memory.view()[:3] = b"own"
    copy = _passed_through_a_socket(handle)
    with copy.map() as mapping, mapping.view() as view:
        assert bytes(view[:3]) == b"own"
    with pytest.raises(HypervisorError) as stale:
        table.grant(PEER, memory, [0, 1])
    assert stale.value.errno == errno.EBUSY, "new pages would not reach the export"
    handle.close()
    copy.close()
    buffers.wait_released(handle.id, 0)
    table.grant(PEER, memory, [0, 1])
    memory.close()


def test_ending_a_grant_an_export_holds_is_deferred(
    table: XenGrantTable, buffers: XenBuffers
) -> None:
    memory, refs = table.share(PEER, 1)
    own = table.grant(OWN, memory, [0], readonly=True)
    handle = buffers.export_from_refs(OWN, own, writable=False)
    table.end_access(own)
    assert table.end_access(refs) == refs
    handle.close()
    memory.close()


def test_imports_need_dmabuf(table: XenGrantTable, buffers: XenBuffers) -> None:
    memory = table.alloc(1)
    handle = buffers.export_from_refs(OWN, table.grant(OWN, memory, [0]))
    with pytest.raises(HypervisorError) as unsupported:
        buffers.import_to_refs(handle, PEER)
    assert unsupported.value.errno == errno.EOPNOTSUPP
    handle.close()
    memory.close()


def test_a_received_handle_may_be_a_character_device() -> None:
    """Real gntdev and gntalloc descriptors have no size or seals; /dev/zero is one too."""
    fd = os.open("/dev/zero", os.O_RDWR | os.O_CLOEXEC)
    handle = SharedBuffer("ab" * 16, [fd], [Segment(0, 0, 1)], readonly=True, lease=None)
    copy = _passed_through_a_socket(handle)
    with copy.map() as mapping, mapping.view() as view:
        assert view[:4] == bytes(4)
    copy.close()
    handle.close()


# -- event channels --------------------------------------------------------------------


@dataclass
class FakeEvtchn:
    """The kernel side of an evtchn descriptor: a socket end the test writes ports to."""

    kernel: socket.socket
    next_port: int = 10
    calls: list[tuple[int, bytes]] = field(default_factory=list)

    def call(self, fd: int, request: int, argument: bytearray | int) -> int:
        self.calls.append((request, bytes(argument) if isinstance(argument, bytearray) else b""))
        if request in (abi.IOCTL_EVTCHN_BIND_UNBOUND_PORT, abi.IOCTL_EVTCHN_BIND_INTERDOMAIN):
            self.next_port += 1
            return self.next_port
        if request == abi.IOCTL_EVTCHN_NOTIFY and argument == abi.port_request(99):
            raise HypervisorError(errno.ENOTCONN, "not bound")
        return 0

    def fire(self, *ports: int) -> None:
        self.kernel.sendall(abi.encode_ports(ports))

    def unmasked(self) -> list[int]:
        self.kernel.setblocking(False)
        try:
            return abi.decode_ports(self.kernel.recv(65536))
        except BlockingIOError:
            return []


@pytest.fixture
def evtchn() -> Iterator[tuple[XenEventChannels, FakeEvtchn]]:
    ours, kernel = socket.socketpair()
    ours.setblocking(False)
    fake = FakeEvtchn(kernel)
    events = XenEventChannels(ours.detach(), fake.call)
    yield events, fake
    events.close()
    kernel.close()


def test_pending_reads_unmasks_and_reports_each_port_once(
    evtchn: tuple[XenEventChannels, FakeEvtchn],
) -> None:
    events, fake = evtchn
    a = events.bind_interdomain(PEER, 5)
    b = events.bind_interdomain(PEER, 6)
    assert events.pending(0) == []
    fake.fire(b, a, b, 4242)
    assert events.pending(1) == [b, a], "duplicates once, unknown ports dropped"
    assert fake.unmasked() == [b, a], "each reported port is written back, unmasking it"
    assert events.pending(0) == []


def test_a_port_is_unbound_until_its_peer_first_notifies(
    evtchn: tuple[XenEventChannels, FakeEvtchn],
) -> None:
    events, fake = evtchn
    port = events.bind_unbound_port(PEER)
    assert events.status(port) == ChannelStatus(PortState.UNBOUND, PEER, None)
    fake.fire(port)
    assert events.pending(1) == [port]
    assert events.status(port) == ChannelStatus(PortState.INTERDOMAIN, PEER, None)
    bound = events.bind_interdomain(PEER, 77)
    assert events.status(bound) == ChannelStatus(PortState.INTERDOMAIN, PEER, 77)
    events.unbind(bound)
    with pytest.raises(HypervisorError) as gone:
        events.status(bound)
    assert gone.value.errno == errno.ENOTCONN
    with pytest.raises(HypervisorError):
        events.unbind(bound)


def test_ioctls_carry_the_headers_argument_structs(
    evtchn: tuple[XenEventChannels, FakeEvtchn],
) -> None:
    events, fake = evtchn
    port = events.bind_interdomain(PEER, 9)
    events.notify(port)
    events.unbind(port)
    assert fake.calls == [
        (abi.IOCTL_EVTCHN_BIND_INTERDOMAIN, abi.EVTCHN_BIND_INTERDOMAIN.pack(PEER, 9)),
        (abi.IOCTL_EVTCHN_NOTIFY, abi.EVTCHN_NOTIFY.pack(port)),
        (abi.IOCTL_EVTCHN_UNBIND, abi.EVTCHN_UNBIND.pack(port)),
    ]
    with pytest.raises(HypervisorError) as unbound:
        events.notify(99)
    assert unbound.value.errno == errno.ENOTCONN


def test_an_overflowed_queue_is_reset_and_every_port_reported(
    evtchn: tuple[XenEventChannels, FakeEvtchn], monkeypatch: pytest.MonkeyPatch
) -> None:
    events, fake = evtchn
    ports = [events.bind_interdomain(PEER, n) for n in range(3)]
    fake.fire(ports[0])

    def overflowed(fd: int, size: int) -> bytes:
        raise OSError(errno.EFBIG, "overflow")

    monkeypatch.setattr(os, "read", overflowed)
    assert events.pending(1) == ports
    assert fake.calls[-1] == (abi.IOCTL_EVTCHN_RESET, b"")
    assert fake.unmasked() == ports


def test_pending_times_out_empty(evtchn: tuple[XenEventChannels, FakeEvtchn]) -> None:
    events, _ = evtchn
    assert events.pending(0.05) == []


@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=1024))
def test_port_codec_round_trips(ports: list[int]) -> None:
    assert abi.decode_ports(abi.encode_ports(ports)) == ports


@given(st.binary(max_size=64).filter(lambda data: len(data) % abi.EVTCHN_PORT_SIZE != 0))
def test_a_torn_port_read_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="whole ports"):
        abi.decode_ports(data)


# -- request codecs --------------------------------------------------------------------


@given(st.integers(0, 0x7FEF), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=600))
def test_map_grant_ref_request_lists_every_ref(domid: int, refs: list[int]) -> None:
    request = abi.map_grant_ref_request(domid, refs)
    assert len(request) == 16 + 8 * len(refs)
    count, pad, index, first_domid, first_ref = abi.GNTDEV_MAP_GRANT_REF.unpack(request)
    assert (count, pad, index, first_domid, first_ref) == (len(refs), 0, 0, domid, refs[0])
    assert list(struct.unpack_from(f"<{2 * len(refs)}I", request, 16)[1::2]) == refs
    struct.pack_into("<Q", request, 8, 0x1234000)
    assert abi.map_grant_ref_index(request) == 0x1234000


@given(st.integers(0, 0x7FEF), st.integers(1, 600), st.booleans())
def test_alloc_gref_request_leaves_room_for_every_ref(
    domid: int, count: int, writable: bool
) -> None:
    request = abi.alloc_gref_request(domid, count, writable)
    assert len(request) == max(16 + 4 * count, abi.GNTALLOC_ALLOC_GREF.struct.size)
    assert abi.GNTALLOC_ALLOC_GREF.unpack(request)[:3] == (domid, int(writable), count)
    refs = list(range(1000, 1000 + count))
    struct.pack_into("<Q", request, 8, 5 * PAGE_SIZE)
    struct.pack_into(f"<{count}I", request, 16, *refs)
    assert abi.alloc_gref_reply(request) == (5 * PAGE_SIZE, refs)


def test_a_failing_ioctl_carries_the_kernels_errno() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(HypervisorError) as refused:
            device.ioctl(read_end, abi.IOCTL_EVTCHN_NOTIFY, abi.port_request(1))
        assert refused.value.errno == errno.ENOTTY
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_adapters_are_the_hv_protocols(xen: FakeXen) -> None:
    """mypy checks these assignments; the calls check the pieces work together."""
    ours, kernel = socket.socketpair()
    hv: Hypervisor = XenHypervisor(
        OWN,
        XenEventChannels(ours.detach(), FakeEvtchn(kernel).call),
        XenGrantTable(OWN, xen.open_gntdev(), xen.open_gntalloc, xen.call),
    )
    grants: GrantTable = hv.grants
    events: EventChannels = hv.events
    exports: Buffers = hv.buffers
    memory: GuestMemory = grants.alloc(1)
    handle: BufferHandle = exports.export_from_refs(OWN, grants.grant(OWN, memory, [0]))
    mapping: Mapping = handle.map()
    assert events.bind_unbound_port(PEER) > 0
    mapping.close()
    handle.close()
    memory.close()
    hv.close()
    kernel.close()


def test_the_control_domain_is_told_by_its_capabilities(tmp_path: Path) -> None:
    capabilities = tmp_path / "capabilities"
    assert not is_control_domain(str(capabilities))
    capabilities.write_text("control_d\n")
    assert is_control_domain(str(capabilities))
    capabilities.write_text("")
    assert not is_control_domain(str(capabilities))


def test_a_domu_reads_its_domid_from_xenstore(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    server = XenStoreServer(tmp_path)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with Client(server.socket_path) as store:
            store.write("domid", "0")  # relative: this connection's /local/domain/0
        assert own_domid(str(server.socket_path), str(tmp_path / "none")) == 0
        with Client(server.socket_path) as store:
            store.write("domid", "DOMID_SELF")
        with pytest.raises(HypervisorError) as odd:
            own_domid(str(server.socket_path), str(tmp_path / "none"))
        assert odd.value.errno == errno.EPROTO
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


# -- on Xen ----------------------------------------------------------------------------

on_xen = pytest.mark.skipif(
    not os.path.exists("/dev/xen/evtchn"),
    reason="needs a Xen domain with /dev/xen (evtchn, gntdev, gntalloc); the Xen rig runs it",
)


@pytest.fixture
def real() -> Iterator[XenHypervisor]:
    hv = open_hypervisor()
    yield hv
    hv.close()


@on_xen
def test_xen_event_channel_loopback(real: XenHypervisor) -> None:
    """A port bound to another of our own ports: notify one, the other fires."""
    events = real.events
    listener = events.bind_unbound_port(real.domid)
    speaker = events.bind_interdomain(real.domid, listener)
    events.notify(speaker)
    assert listener in events.pending(5)
    assert events.status(listener).state is PortState.INTERDOMAIN
    events.notify(speaker)
    assert listener in events.pending(5), "the port was unmasked by the first pending()"
    events.unbind(speaker)
    events.unbind(listener)


@on_xen
def test_xen_gntalloc_pages_mapped_back_through_gntdev(real: XenHypervisor) -> None:
    """The ABI end to end: ALLOC_GREF to ourselves, then MAP_GRANT_REF and mmap of the refs."""
    gntalloc = device.open_device("gntalloc")
    gntdev = device.open_device("gntdev")
    try:
        request = abi.alloc_gref_request(real.domid, 2, writable=True)
        device.ioctl(gntalloc, abi.IOCTL_GNTALLOC_ALLOC_GREF, request)
        index, refs = abi.alloc_gref_reply(request)
        own = mmap.mmap(gntalloc, 2 * PAGE_SIZE, offset=index)
        own[PAGE_SIZE : PAGE_SIZE + 4] = b"xen!"
        mapped = abi.map_grant_ref_request(real.domid, refs)
        device.ioctl(gntdev, abi.IOCTL_GNTDEV_MAP_GRANT_REF, mapped)
        offset = abi.map_grant_ref_index(mapped)
        theirs = mmap.mmap(gntdev, 2 * PAGE_SIZE, offset=offset)
        assert theirs[PAGE_SIZE : PAGE_SIZE + 4] == b"xen!"
        theirs.close()
        device.ioctl(
            gntdev, abi.IOCTL_GNTDEV_UNMAP_GRANT_REF, abi.unmap_grant_ref_request(offset, 2)
        )
        own.close()
        device.ioctl(gntalloc, abi.IOCTL_GNTALLOC_DEALLOC_GREF, abi.dealloc_gref_request(index, 2))
    finally:
        os.close(gntdev)
        os.close(gntalloc)


@on_xen
def test_xen_guest_memory_granted_and_exported(real: XenHypervisor) -> None:
    memory = real.grants.alloc(2)
    memory.view()[:4] = b"swap"
    refs = real.grants.grant(real.domid, memory, [0, 1])
    handle = real.buffers.export_from_refs(real.domid, refs, writable=False)
    real.grants.end_access(refs)
    copy = _passed_through_a_socket(handle)
    with copy.map() as mapping, mapping.view() as view:
        assert bytes(view[:4]) == b"swap"
    copy.close()
    handle.close()
    memory.close()


@on_xen
def test_xen_exports_and_maps_real_grants_through_gntdev(real: XenHypervisor) -> None:
    """Our own real grants (gntalloc) exported as gntdev handles and received elsewhere."""
    gntalloc = device.open_device("gntalloc")
    try:
        request = abi.alloc_gref_request(real.domid, 2, writable=True)
        device.ioctl(gntalloc, abi.IOCTL_GNTALLOC_ALLOC_GREF, request)
        index, refs = abi.alloc_gref_reply(request)
        with mmap.mmap(gntalloc, 2 * PAGE_SIZE, offset=index) as own:
            own[:4] = b"real"
        assert max(refs) < LOOPBACK_REF_BASE
        with real.grants.map(real.domid, refs, writable=False) as mapping, mapping.view() as view:
            assert bytes(view[:4]) == b"real"
        handle = real.buffers.export_from_refs(real.domid, refs, writable=False)
        assert isinstance(handle, XenBuffer)
        copies = [_passed_through_a_socket(handle) for _ in range(2)]
        for copy in copies:
            with copy.map() as mapping, mapping.view() as view:
                assert bytes(view[:4]) == b"real"
            copy.close()
        handle.close()
        real.buffers.wait_released(handle.id, 5)
    finally:
        os.close(gntalloc)
