"""Hostile domains for tests/hostile: each runs `agent(hv, control)` and carries out attacks
the test names over the control connection, answering ("ok", result) or ("error", errno,
message). This module holds no tests; the domain processes import it.
"""

import asyncio
import collections
import contextlib
import errno
import os
import random
import resource
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from display_backend_agents import XenbusFrontend
from pvdisplay.display import front
from pvdisplay.display.front import Display, DisplayError, Framebuffer
from pvdisplay.hv import GuestMemory, Hypervisor, HypervisorError, Mapping
from pvdisplay.hv.local.client import LocalHypervisor
from pvdisplay.input.front import Keyboard
from pvdisplay.ipc.sockets import close_all, rights
from pvdisplay.store.client import Client, Watch
from pvdisplay.wire import displif, fourcc, kbdif

REPLY_TIMEOUT = 60.0


class Attacker:
    """Holds what its attacks made until the domain dies: a hostile guest frees nothing."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self.memory: list[GuestMemory] = []
        self.ports: list[int] = []
        self.mappings: list[Mapping] = []
        self.hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def share_until_refused(self, grantee: int, most: int) -> tuple[int, int | None]:
        """share(grantee, 1) in a loop: how many succeeded, and the errno that stopped it."""
        for count in range(most):
            try:
                self.memory.append(self.hv.grants.share(grantee, 1)[0])
            except HypervisorError as exc:
                return count, exc.errno
        return most, None

    def bind_until_refused(self, remote: int, most: int) -> tuple[int, int | None]:
        for count in range(most):
            try:
                self.ports.append(self.hv.events.bind_unbound_port(remote))
            except HypervisorError as exc:
                return count, exc.errno
        return most, None

    def send_records(self, records: list[tuple[bytes, int]]) -> None:
        """Write raw records on the broker socket, each with that many descriptors."""
        assert isinstance(self.hv, LocalHypervisor)
        with socket.socket(fileno=os.dup(self.hv.fileno())) as sock:
            for data, count in records:
                fds = [os.eventfd(0) for _ in range(count)]
                sock.sendmsg([data], rights(fds))
                close_all(fds)

    def request(self, body: dict[str, object]) -> object:
        """One request, whatever it says; the broker's reply body (errors raise)."""
        assert isinstance(self.hv, LocalHypervisor)
        return self.hv.call(body).body

    def limit_descriptors(self, room: int) -> None:
        """Leave this process room for `room` more descriptors (its soft limit)."""
        opened = len(os.listdir("/proc/self/fd")) - 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (opened + room, self.hard_limit))

    def unlimit_descriptors(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.hard_limit, self.hard_limit))

    def map_refs(self, granter: int, refs: list[int]) -> int:
        self.mappings.append(self.hv.grants.map(granter, refs))
        return len(self.mappings)

    def share_one(self, grantee: int) -> int:
        """One honest share, kept: the ref."""
        memory, refs = self.hv.grants.share(grantee, 1)
        self.memory.append(memory)
        return refs[0]


def agent(hv: Hypervisor, control: Connection) -> None:
    """A bare domain (no XenStore, no devices) attacking the hypervisor."""
    _serve(control, Attacker(hv))


class RawGuest(XenbusFrontend):
    """A vdispl frontend built on the wire codecs, free to skip what an honest one does."""

    session = 0
    honest_directory = 0

    def flips_unread(self, count: int) -> int:
        """Show a 16x16 framebuffer and flip it `count` times without ever reading the
        event page; the number of flips the backend accepted."""
        refs = self.share("fb", 1)
        directory = self.directory("fb-dir", refs)
        xrgb = fourcc.by_name("XRGB8888").fourcc
        for request in (
            displif.DbufCreate(1, 1, 16, 16, 32, 4096, 0, directory, 0),
            displif.FbAttach(2, 1, 2, 16, 16, xrgb),
        ):
            if displif.decode_response(self.call(0, request.encode())).status:
                raise OSError(errno.EIO, f"{request.operation.name} refused")
        accepted = 0
        for number in range(count):
            response = self.call(0, displif.PageFlip(100 + number, 2).encode())
            accepted += displif.decode_response(response).status == 0
        return accepted

    def honest_operations(self, flips: int) -> tuple[int, int]:
        """What an honest guest does while another exhausts a budget: a port bound and
        unbound, a XenStore write and read, a shared one-page buffer shown and flipped
        `flips` times (each event read), then taken down. (operations, how many failed)."""
        self.session += 1
        try:
            return self._honest_operations(flips)
        finally:  # what _share made, even when a step after it failed
            for name in (f"honest{self.session}", f"honest{self.session}-dir"):
                if name in self.memory:
                    self.free(name)

    def _honest_operations(self, flips: int) -> tuple[int, int]:
        steps: list[Callable[[], bool]] = [self._port, self._xenstore, self._share]
        failed = sum(not _succeeds(step) for step in steps)
        if failed:
            return len(steps) + flips + 4, failed + flips + 4
        cookie = 1000 * self.session
        xrgb = fourcc.by_name("XRGB8888").fourcc
        requests = [
            displif.DbufCreate(1, cookie, 16, 16, 32, 4096, 0, self.honest_directory, 0),
            displif.FbAttach(2, cookie, cookie + 1, 16, 16, xrgb),
            *(displif.PageFlip(3 + number, cookie + 1) for number in range(flips)),
            displif.FbDetach(3 + flips, cookie + 1),
            displif.DbufDestroy(4 + flips, cookie),
        ]
        for request in requests:
            status = displif.decode_response(self.call(0, request.encode())).status
            failed += status != 0
            if isinstance(request, displif.PageFlip) and status == 0:
                self.events(0, 1)
        return len(steps) + len(requests), failed

    def _port(self) -> bool:
        self.hv.events.unbind(self.hv.events.bind_unbound_port(0))
        return True

    def _xenstore(self) -> bool:
        self.xs.write(f"{self.front}/honest", str(self.session))
        return self.xs.read(f"{self.front}/honest") == str(self.session).encode()

    def _share(self) -> bool:
        refs = self.share(f"honest{self.session}", 1)
        self.honest_directory = self.directory(f"honest{self.session}-dir", refs)
        return True

    def fuzz(self, count: int, seed: int) -> dict[int, int]:
        """`count` random requests, nine in ten with a real operation code, a ring's worth
        at a time; how many responses came back with each status."""
        rng = random.Random(seed)
        operations = [int(op) for op in displif.Operation]
        ring = self.transports[0].ring
        statuses: collections.Counter[int] = collections.Counter()
        sent = 0
        while sent < count:
            batch = 0
            while ring.free_requests and sent + batch < count:
                slot = bytearray(rng.randbytes(displif.REQUEST_SIZE))
                if rng.random() < 0.9:
                    slot[_OPERATION] = rng.choice(operations)
                ring.new_request()[:] = slot
                batch += 1
            if ring.push_requests():
                self.hv.events.notify(self.transports[0].req_port)
            for _ in range(batch):
                statuses[displif.decode_response(self.response(0)).status] += 1
            sent += batch
        return dict(statuses)


_OPERATION = displif.PageFlip.LAYOUT.fields["operation"].offset


def _succeeds(step: Callable[[], bool]) -> bool:
    try:
        return step()
    except (OSError, HypervisorError):
        return False


def raw_guest(hv: Hypervisor, control: Connection, xenstore_socket: str, name: str) -> None:
    """A guest of the emulated host running `RawGuest` (its socket is DIR/domain/N)."""
    _serve(control, RawGuest(hv, str(Path(xenstore_socket).parents[1]), 0))


def _serve(control: Connection, target: object) -> None:
    while True:
        try:
            name, args = control.recv()
        except EOFError:
            return
        method: Callable[..., Any] = getattr(target, name)
        try:
            control.send(("ok", method(*args), None))
        except OSError as exc:
            control.send(("error", str(exc), exc.errno or errno.EIO))


def dbuf_flood(
    hv: Hypervisor, control: Connection, xenstore_socket: str, name: str, cue: str = ""
) -> None:
    """A guest that makes 1x1 framebuffers (a one-page DBUF_CREATE and an FB_ATTACH each)
    until the backend refuses one, reports (made, errno), and holds them until killed.
    With `cue`, it says "connected" and waits for a word before it starts."""

    async def session(display: Display) -> None:
        if cue:
            control.send("connected")
            await asyncio.get_running_loop().run_in_executor(None, control.recv)
        held: list[Framebuffer] = []
        code: int | None = None
        while code is None:
            try:
                held.append(await display.create_framebuffer(1, 1, fourcc.by_name("XRGB8888")))
            except (DisplayError, HypervisorError) as exc:
                code = exc.errno
        control.send((len(held), code))
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_eof, control)

    front.run(hv, xenstore_socket, session)


def kbd_garbage(hv: Hypervisor, control: Connection, xenstore_socket: str, name: str) -> None:
    """A guest that connects its keyboard, then publishes an out event kbdif does not have
    and impossible ring indices, and notifies 10,000 times; holds on until killed."""

    async def main() -> None:
        keyboard = await Keyboard.open(hv, xenstore_socket)
        assert keyboard.port is not None
        struct.pack_into("<I", keyboard.page, kbdif.OUT_PROD_OFFSET, 123)
        struct.pack_into("<I", keyboard.page, kbdif.IN_CONS_OFFSET, 0xDEAD_BEEF)
        for _ in range(10_000):
            hv.events.notify(keyboard.port)
        control.send("sent")
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_eof, control)

    asyncio.run(main())


def watch_flood(hv: Hypervisor, control: Connection, xenstore_socket: str, name: str) -> None:
    """A guest that sets watches on every XenStore connection it may open until refused;
    reports (watches set, errno), then holds them until killed."""
    clients: list[Client] = []
    watches: list[Watch] = []
    code: int | None = None
    while code is None and len(watches) < 10_000:
        try:
            if len(watches) % 100 == 0:
                clients.append(Client(xenstore_socket))
            watches.append(clients[-1].watch(f"/local/domain/{hv.domid}", f"t{len(watches)}"))
        except OSError as exc:
            code = exc.errno
    control.send((len(watches), code))
    _wait_for_eof(control)


def idle(hv: Hypervisor, control: Connection, xenstore_socket: str, name: str) -> None:
    """A guest that does nothing until killed (its XenStore socket is the attacker's)."""
    _wait_for_eof(control)


def _wait_for_eof(control: Connection) -> None:
    with contextlib.suppress(EOFError):
        control.recv()


class Remote:
    """The test's end of an attacker domain."""

    def __init__(self, control: Connection) -> None:
        self.control = control

    def __call__(self, method: str, *args: Any) -> Any:
        self.control.send((method, args))
        if not self.control.poll(REPLY_TIMEOUT):
            raise TimeoutError(f"the attacker did not answer {method}")
        status, value, code = self.control.recv()
        if status == "error":
            raise OSError(code, value)
        return value
