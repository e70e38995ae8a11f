"""Zero-copy buffer handles: export from refs, pass over SCM_RIGHTS, wait, import."""

import errno
import fcntl
import mmap
import os
import re
import socket
from collections.abc import Callable, Iterator

import pytest
from hv_actor import Actor, start_actors

from pvdisplay.hv import PAGE_SIZE, BufferHandle, Buffers, HypervisorError
from pvdisplay.hv.local.client import LocalBuffers
from pvdisplay.hv.local.launcher import DomainLauncher
from pvdisplay.ipc.buffers import SharedBuffer

pytestmark = pytest.mark.processes

_conforms: tuple[Callable[[LocalBuffers], Buffers], Callable[[SharedBuffer], BufferHandle]] = (
    lambda buffers: buffers,
    lambda handle: handle,
)


@pytest.fixture
def host() -> Iterator[DomainLauncher]:
    with DomainLauncher() as running:
        yield running


def receive_export(exporter: Actor, key: str) -> SharedBuffer:
    """The test process plays a local consumer (an output) the exporter sends to."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        exporter.give_socket("to-output", theirs)
        exporter("send_handle", key=key, sock_key="to-output")
        return SharedBuffer.receive(ours)


def test_an_exported_buffer_is_mapped_by_another_process_without_copying(
    host: DomainLauncher,
) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="fb", domid=back.domid, pages=4)
    front("write", key="fb", offset=PAGE_SIZE, data=b"first frame")
    handle_id = back("export", key="h", domid=front.domid, refs=refs, rw=False)

    handle = receive_export(back, "h")
    assert handle.id == handle_id
    assert (handle.pages, handle.readonly) == (4, True)
    with handle.map() as mapping:
        view = mapping.view()
        assert bytes(view[PAGE_SIZE : PAGE_SIZE + 11]) == b"first frame"
        front("write", key="fb", offset=PAGE_SIZE, data=b"frame two!!")
        assert bytes(view[PAGE_SIZE : PAGE_SIZE + 11]) == b"frame two!!"
        view.release()
    handle.close()


def test_wait_released_times_out_while_held_and_then_returns(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="fb", domid=back.domid, pages=2)
    handle_id = back("export", key="h", domid=front.domid, refs=refs)
    handle = receive_export(back, "h")
    back("close", key="h")
    mapping = handle.map()
    handle.close()

    with pytest.raises(HypervisorError) as failure:
        back("wait_released", id=handle_id, timeout=0.05)
    assert failure.value.errno == errno.ETIMEDOUT
    assert front("end", refs=refs) == refs  # the export still maps them

    mapping.close()
    back("wait_released", id=handle_id, timeout=30)
    back("wait_released", id=handle_id, timeout=0)  # already gone is not an error
    back("wait_released", id="0" * 32, timeout=0)
    stats = host.stats()
    assert (stats["exports"], stats["grants"]) == (0, 0)


def test_handles_crossing_processes_are_named_by_128_random_bits(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="fb", domid=back.domid, pages=1)
    ids = {back("export", key=f"h{n}", domid=front.domid, refs=refs) for n in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"[0-9a-f]{32}", handle_id) for handle_id in ids)


def test_a_read_only_export_cannot_be_mapped_writable(host: DomainLauncher) -> None:
    front, back = start_actors(host, 2)
    refs = front("share", key="fb", domid=back.domid, pages=1, ro=True)
    with pytest.raises(HypervisorError) as failure:
        back("export", key="h", domid=front.domid, refs=refs)
    assert failure.value.errno == errno.EINVAL
    back("export", key="h", domid=front.domid, refs=refs, rw=False)
    with pytest.raises(HypervisorError) as failure:
        back("map_handle", key="h", new_key="m", rw=True)
    assert failure.value.errno == errno.EACCES

    # Below the API too: the descriptors handed out are O_RDONLY reopens.
    handle = receive_export(back, "h")
    for fd in handle.fds:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        with pytest.raises(PermissionError):
            mmap.mmap(fd, PAGE_SIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    handle.close()


def test_import_grants_a_local_buffer_and_release_defers_while_mapped(host: DomainLauncher) -> None:
    back, front = start_actors(host, 2)
    back("allocate_buffer", key="buf", pages=2)
    back("map_handle", key="buf", new_key="local", rw=True)
    back("write", key="local", offset=PAGE_SIZE, data=b"backend pixels")
    import_id, refs = back("import", key="buf", domid=front.domid)
    assert len(refs) == 2

    front("map", key="m", domid=back.domid, refs=refs)
    assert front("read", key="m", offset=PAGE_SIZE, length=14) == b"backend pixels"
    assert back("release", import_id=import_id) == refs
    assert host.stats()["grants"] == 2

    front("close", key="m")
    stats = host.stats()
    assert (stats["grants"], stats["imports"], stats["allocations"]) == (0, 0, 0)
    with pytest.raises(HypervisorError) as failure:
        back("release", import_id=import_id)
    assert failure.value.errno == errno.ENOENT


def test_one_local_buffer_can_be_imported_for_two_domains(host: DomainLauncher) -> None:
    back, first, second = start_actors(host, 3)
    back("allocate_buffer", key="buf", pages=1)
    first_id, first_refs = back("import", key="buf", domid=first.domid, ro=True)
    second_id, second_refs = back("import", key="buf", domid=second.domid, ro=True)
    assert first_id != second_id
    assert host.stats()["allocations"] == 1

    first("map", key="m", domid=back.domid, refs=first_refs, rw=False)
    second("map", key="m", domid=back.domid, refs=second_refs, rw=False)
    assert back("release", import_id=first_id) == first_refs
    assert back("release", import_id=second_id) == second_refs
    first("close", key="m")
    second("close", key="m")
    assert host.stats()["allocations"] == 0


def test_only_the_owner_may_grant_memory_through_an_import(host: DomainLauncher) -> None:
    front, back, third = start_actors(host, 3)
    refs = front("share", key="fb", domid=back.domid, pages=1)
    back("export", key="h", domid=front.domid, refs=refs)
    with pytest.raises(HypervisorError) as failure:
        back("import", key="h", domid=third.domid)
    assert failure.value.errno == errno.EPERM
