"""A scriptable domain for the hv tests: each step is sent over the control connection.

`actor` runs inside a real domain process; `Actor` drives it from the test, so a test
reads as the sequence of hypervisor calls the domains make. Objects a domain holds
(memory, mappings, handles) are kept under names the test chooses. This module holds
no tests; it is imported by the test_hv_* modules and by the domain processes.
"""

import asyncio
import contextlib
import ctypes
import mmap
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import numpy as np

from pvdisplay.hv import Hypervisor, HypervisorError
from pvdisplay.hv.local.client import LocalHypervisor
from pvdisplay.hv.local.launcher import DomainLauncher, DomainProcess
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.sockets import close_all

REPLY_TIMEOUT = 60.0

Held = dict[str, Any]


def _share(
    hv: Hypervisor, held: Held, *, key: str, domid: int, pages: int, ro: bool = False
) -> list[int]:
    held[key], refs = hv.grants.share(domid, pages, readonly=ro)
    return refs


def _alloc(hv: Hypervisor, held: Held, *, key: str, pages: int) -> None:
    held[key] = hv.grants.alloc(pages)


def _grant(
    hv: Hypervisor, held: Held, *, key: str, domid: int, pages: list[int], ro: bool = False
) -> list[int]:
    return hv.grants.grant(domid, held[key], pages, readonly=ro)


def _map(
    hv: Hypervisor, held: Held, *, key: str, domid: int, refs: list[int], rw: bool = True
) -> int:
    held[key] = hv.grants.map(domid, refs, writable=rw)
    return int(held[key].length)


def _close(hv: Hypervisor, held: Held, *, key: str) -> None:
    held.pop(key).close()


def _drop(hv: Hypervisor, held: Held, *, key: str) -> None:
    del held[key]


def _write(hv: Hypervisor, held: Held, *, key: str, offset: int, data: bytes) -> None:
    view = held[key].view()
    view[offset : offset + len(data)] = data
    view.release()


def _read(hv: Hypervisor, held: Held, *, key: str, offset: int, length: int) -> bytes:
    view = held[key].view()
    data = bytes(view[offset : offset + length])
    view.release()
    return data


def _poke(hv: Hypervisor, held: Held, *, key: str, offset: int) -> None:
    """Write one byte at the raw address, bypassing every Python-level check."""
    ctypes.memmove(held[key].address + offset, b"\xff", 1)


def _numpy_write(hv: Hypervisor, held: Held, *, key: str) -> str:
    array = held[key].array()
    try:
        array[0] = 1
    except ValueError as exc:
        return type(exc).__name__
    return "written"


def _close_with_view(hv: Hypervisor, held: Held, *, key: str) -> int | None:
    """Try to close a mapping while an array still views it; return the errno."""
    array = held[key].array()
    try:
        held[key].close()
    except HypervisorError as exc:
        return exc.errno
    finally:
        del array
    return None


def _events(hv: Hypervisor, held: Held, *, call: str, args: tuple[Any, ...] = ()) -> Any:
    result = getattr(hv.events, call)(*args)
    if call == "status":
        return (result.state.value, result.remote_domid, result.remote_port)
    return result


def _wait_fileno(hv: Hypervisor, held: Held, *, timeout: float) -> list[int]:
    """Wait through a selector on fileno(), then collect."""
    with selectors.DefaultSelector() as selector:
        selector.register(hv.events.fileno(), selectors.EVENT_READ)
        return hv.events.pending(0) if selector.select(timeout) else []


def _wait_asyncio(hv: Hypervisor, held: Held, *, timeout: float) -> list[int]:
    """Wait with asyncio's add_reader on fileno(), as an event-loop driver would."""

    async def wait() -> list[int]:
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[list[int]] = loop.create_future()

        def collect() -> None:
            if not fired.done():
                fired.set_result(hv.events.pending(0))

        loop.add_reader(hv.events.fileno(), collect)
        try:
            return await asyncio.wait_for(fired, timeout)
        finally:
            loop.remove_reader(hv.events.fileno())

    return asyncio.run(wait())


def _export(
    hv: Hypervisor, held: Held, *, key: str, domid: int, refs: list[int], rw: bool = True
) -> str:
    held[key] = hv.buffers.export_from_refs(domid, refs, writable=rw)
    return str(held[key].id)


def _map_handle(hv: Hypervisor, held: Held, *, key: str, new_key: str, rw: bool = False) -> None:
    held[new_key] = held[key].map(writable=rw)


def _allocate_buffer(hv: Hypervisor, held: Held, *, key: str, pages: int) -> str:
    held[key] = SharedBuffer.allocate(pages)
    return str(held[key].id)


def _import(
    hv: Hypervisor, held: Held, *, key: str, domid: int, ro: bool = False
) -> tuple[str, list[int]]:
    imported = hv.buffers.import_to_refs(held[key], domid, readonly=ro)
    return imported.id, imported.refs


def _send_handle(hv: Hypervisor, held: Held, *, key: str, sock_key: str) -> None:
    held[key].send(held[sock_key])


def _take_socket(hv: Hypervisor, held: Held, *, key: str) -> None:
    """The next message on the control connection carries a socket descriptor."""
    held[key] = socket.socket(fileno=recv_handle(held["__control__"]))


def _cycle_map(hv: Hypervisor, held: Held, *, domid: int, refs: list[int], count: int) -> None:
    for _ in range(count):
        mapping = hv.grants.map(domid, refs)
        mapping.close()


def _cycle_export(hv: Hypervisor, held: Held, *, domid: int, refs: list[int], count: int) -> None:
    for _ in range(count):
        handle = hv.buffers.export_from_refs(domid, refs)
        mapping = handle.map()
        handle.close()
        mapping.close()
        hv.buffers.wait_released(handle.id, REPLY_TIMEOUT)


def _map_forever(hv: Hypervisor, held: Held, *, domid: int, refs: list[int]) -> None:
    """Map and unmap until killed; the first mapping is announced before looping."""
    held["__control__"].send(("ok", "looping"))
    while True:
        hv.grants.map(domid, refs).close()


def _process_stats(hv: Hypervisor, held: Held) -> dict[str, int]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    with open("/proc/self/maps") as maps:
        mappings = sum(1 for _ in maps)
    return {
        "fds": len(os.listdir("/proc/self/fd")) - 1,
        "mappings": mappings,
        "rss_anon_kb": int(fields["RssAnon"].split()[0]),
        "rss_shmem_kb": int(fields["RssShmem"].split()[0]),
    }


def _fill(hv: Hypervisor, held: Held, *, key: str, value: int) -> None:
    held[key].array().fill(value)


def _sum(hv: Hypervisor, held: Held, *, key: str) -> int:
    return int(held[key].array().sum(dtype=np.uint64))


def _scan_memory(hv: Hypervisor, held: Held, *, needle: bytes) -> list[tuple[int, bool]]:
    """Every memory object this process can reach, bypassing the API: (size, has needle).

    A hostile domain can open each descriptor it holds and, with CAP_SYS_ADMIN,
    /proc/self/map_files/ entries of its mappings, then map the whole object behind.
    """
    paths = [f"/proc/self/fd/{name}" for name in os.listdir("/proc/self/fd")]
    with contextlib.suppress(OSError):
        paths += [f"/proc/self/map_files/{n}" for n in os.listdir("/proc/self/map_files")]
    seen = set()
    reached = []
    for path in paths:
        try:
            if not os.readlink(path).startswith("/memfd:"):
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) in seen or not stat.S_ISREG(info.st_mode):
                continue
            seen.add((info.st_dev, info.st_ino))
            with mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ) as whole:
                reached.append((info.st_size, whole.find(needle) >= 0))
        finally:
            os.close(fd)
    return sorted(reached)


def _break_framing(hv: Hypervisor, held: Held) -> None:
    """Send the broker a record that is not a message, then wait to be killed."""
    assert isinstance(hv, LocalHypervisor)
    socket.socket(fileno=os.dup(hv.fileno())).send(b"x")
    time.sleep(60)


def _raw_call(hv: Hypervisor, held: Held, *, body: dict[str, Any]) -> dict[str, Any]:
    """Send the broker any request body; the reply's descriptors are closed."""
    assert isinstance(hv, LocalHypervisor)
    reply = hv.call(body)
    close_all(reply.fds)
    return reply.body


def _exit(hv: Hypervisor, held: Held, *, code: int) -> None:
    os._exit(code)


ACTIONS: dict[str, Callable[..., Any]] = {
    "share": _share,
    "alloc": _alloc,
    "grant": _grant,
    "end": lambda hv, held, *, refs: hv.grants.end_access(refs),
    "map": _map,
    "close": _close,
    "drop": _drop,
    "write": _write,
    "read": _read,
    "poke": _poke,
    "numpy_write": _numpy_write,
    "close_with_view": _close_with_view,
    "events": _events,
    "wait_fileno": _wait_fileno,
    "wait_asyncio": _wait_asyncio,
    "export": _export,
    "map_handle": _map_handle,
    "allocate_buffer": _allocate_buffer,
    "import": _import,
    "release": lambda hv, held, *, import_id: hv.buffers.release(import_id),
    "wait_released": lambda hv, held, *, id, timeout: hv.buffers.wait_released(id, timeout),
    "send_handle": _send_handle,
    "take_socket": _take_socket,
    "cycle_map": _cycle_map,
    "cycle_export": _cycle_export,
    "map_forever": _map_forever,
    "process_stats": _process_stats,
    "fill": _fill,
    "sum": _sum,
    "scan_memory": _scan_memory,
    "break_framing": _break_framing,
    "raw_call": _raw_call,
    "exit": _exit,
}


def actor(hv: Hypervisor, control: Connection) -> None:
    """Domain entry point: run each (action, *args) received, answer ok or errno."""
    held: Held = {"__control__": control}
    while True:
        try:
            action, kwargs = control.recv()
        except EOFError:
            return
        try:
            result = ACTIONS[action](hv, held, **kwargs)
        except HypervisorError as exc:
            control.send(("error", exc.errno, exc.message))
        else:
            control.send(("ok", result))


class Actor:
    """The test's side of one actor domain."""

    def __init__(self, domain: DomainProcess) -> None:
        self.domain = domain
        self.domid = domain.domid

    def __call__(self, action: str, **kwargs: Any) -> Any:
        self.domain.control.send((action, kwargs))
        return self.reply()

    def reply(self) -> Any:
        if not self.domain.control.poll(REPLY_TIMEOUT):
            raise TimeoutError(f"domain {self.domid} did not answer")
        reply = self.domain.control.recv()
        if reply[0] == "error":
            raise HypervisorError(reply[1], reply[2])
        return reply[1]

    def give_socket(self, key: str, sock: socket.socket) -> None:
        self.domain.control.send(("take_socket", {"key": key}))
        send_handle(self.domain.control, sock.fileno(), self.domain.pid)
        self.reply()


def start_actors(host: DomainLauncher, count: int) -> list[Actor]:
    return [Actor(host.start_domain(f"{__name__}:actor")) for _ in range(count)]
