"""Domain processes the display backend tests drive: a backend core and a raw frontend.

`start(host, kind, *args, domid=N)` starts a domain running `agent(hv, control, kind,
*args)`; the returned `Remote` calls methods of the agent object in that process and
returns their results (or raises `RemoteError` with the remote errno).
"""

import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from pvdisplay import backend_domain, xenbus
from pvdisplay.display.backend import ConnectorConfig, DisplayDevice, FrontendConfig
from pvdisplay.display.limits import DEFAULT_PAGE_BUDGET
from pvdisplay.hv import GuestMemory, Hypervisor, Mapping
from pvdisplay.hv.local.launcher import DomainLauncher, DomainProcess
from pvdisplay.planes.model import PlaneKey, PlaneRegistry
from pvdisplay.store.client import Client
from pvdisplay.wire import displif
from pvdisplay.wire.ring import FrontRing, init_shared_ring

REPLY_TIMEOUT = 60.0


class RemoteError(Exception):
    def __init__(self, errno_: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = errno_


class Remote:
    def __init__(self, domain: DomainProcess) -> None:
        self.domain = domain
        self.domid = domain.domid

    def __call__(self, method: str, *args: Any) -> Any:
        self.domain.control.send((method, args))
        if not self.domain.control.poll(REPLY_TIMEOUT):
            raise TimeoutError(f"domain {self.domid} did not answer {method}")
        status, value, code = self.domain.control.recv()
        if status == "error":
            raise RemoteError(code, value)
        return value


def start(host: DomainLauncher, kind: str, *args: str, domid: int | None = None) -> Remote:
    return Remote(host.start_domain("display_backend_agents:agent", kind, *args, domid=domid))


def agent(hv: Hypervisor, control: Connection, kind: str, *args: str) -> None:
    target: object
    if kind == "backend":
        target = BackendAgent(hv)
    elif kind == "frontend":
        target = FrontendAgent(hv, int(args[0]))
    else:
        target = XenbusFrontend(hv, args[0], int(args[1]))
    while True:
        try:
            method, call_args = control.recv()
        except EOFError:
            return
        try:
            control.send(("ok", getattr(target, method)(*call_args), None))
        except Exception as exc:
            control.send(("error", f"{type(exc).__name__}: {exc}", getattr(exc, "errno", None)))


class BackendAgent:
    """Runs the sans-IO core with the real hypervisor of its domain."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self.planes = PlaneRegistry()
        self.device: DisplayDevice | None = None

    def connect(  # noqa: PLR0917 (a remote call passes its arguments by position)
        self,
        frontend: int,
        resolutions: list[tuple[int, int]],
        be_alloc: bool = False,
        version: int = 2,
        copy: bool = False,
        page_budget: int = DEFAULT_PAGE_BUDGET,
    ) -> None:
        connectors = tuple(
            ConnectorConfig(i, w, h, f"conn{i}") for i, (w, h) in enumerate(resolutions)
        )
        config = FrontendConfig(frontend, 0, connectors, be_alloc, version)
        self.device = DisplayDevice(
            self.hv, config, self.planes, copy_frames=copy, page_budget=page_budget
        )

    def request(self, connector: int, slot: bytes) -> tuple[bytes, list[bytes]]:
        assert self.device is not None
        reply = self.device.handle(connector, slot)
        return reply.response, list(reply.events)

    def plane(self, domid: int, connector: int) -> dict[str, object] | None:
        plane = self.planes.get(PlaneKey(domid, 0, connector))
        return None if plane is None else plane.info.to_json()

    def pixels(self, domid: int, connector: int) -> bytes:
        """The plane's picture read through its buffer handle (a zero-copy mapping)."""
        plane = self.planes.get(PlaneKey(domid, 0, connector))
        assert plane is not None and plane.handle is not None
        info = plane.info
        with plane.handle.map() as mapping, mapping.view() as view:
            return view[info.offset : info.offset + info.frame_bytes].tobytes()

    def hold_frame(self, domid: int, connector: int) -> None:
        """Hold the connector's frame as a planes client copying it does (until let go)."""
        self.held = self.planes.frames_lock(PlaneKey(domid, 0, connector))
        self.held.acquire()

    def let_go(self) -> None:
        self.held.release()

    def bytes_copied(self) -> int:
        assert self.device is not None
        return self.device.bytes_copied

    def pages(self) -> int:
        assert self.device is not None
        return self.device.pages

    def close(self) -> None:
        assert self.device is not None
        self.device.close()
        self.device = None


class FrontendAgent:
    """A frontend reduced to grants: buffers, page directories, pixels."""

    def __init__(self, hv: Hypervisor, backend: int) -> None:
        self.hv = hv
        self.backend = backend
        self.memory: dict[str, GuestMemory] = {}
        self.mappings: dict[str, Mapping] = {}

    def share(self, name: str, pages: int, fill: int = 0) -> list[int]:
        memory, refs = self.hv.grants.share(self.backend, pages)
        self.memory[name] = memory
        memory.array()[:] = fill
        return refs

    def write(self, name: str, offset: int, data: bytes) -> None:
        source = self.mappings[name] if name in self.mappings else self.memory[name]
        with source.view() as view:
            view[offset : offset + len(data)] = data

    def read(self, name: str, offset: int, length: int) -> bytes:
        source = self.mappings[name] if name in self.mappings else self.memory[name]
        with source.view() as view:
            return view[offset : offset + length].tobytes()

    def directory(self, name: str, grefs: list[int], loop: bool = False) -> int:
        """A page directory for `grefs`; with `loop` the last page points back at the first."""
        pages = displif.directory_pages_for(len(grefs))
        dir_refs = self.share(name, pages)
        encoded = displif.encode_page_directory(grefs, dir_refs)
        with self.memory[name].view() as view:
            for index, page in enumerate(encoded):
                view[index * 4096 : (index + 1) * 4096] = page
            if loop:
                struct.pack_into("<I", view, (pages - 1) * 4096, dir_refs[0])
        return dir_refs[0]

    def empty_directory(self, name: str, num_grefs: int) -> int:
        """Directory pages for the backend to fill (be-alloc), chained and zeroed."""
        pages = displif.directory_pages_for(num_grefs)
        dir_refs = self.share(name, pages)
        encoded = displif.encode_page_directory([0] * num_grefs, dir_refs)
        with self.memory[name].view() as view:
            for index, page in enumerate(encoded):
                view[index * 4096 : (index + 1) * 4096] = page
        return dir_refs[0]

    def directory_refs(self, name: str, num_grefs: int) -> list[int]:
        """The refs written in a directory (by the backend, for be-alloc)."""
        refs: list[int] = []
        with self.memory[name].view() as view:
            reader = displif.PageDirectoryReader(num_grefs)
            page = 0
            while not reader.done:
                reader.feed(view[page * 4096 : (page + 1) * 4096].tobytes())
                page += 1
            refs = reader.grefs
        return refs

    def map(self, name: str, refs: list[int]) -> None:
        self.mappings[name] = self.hv.grants.map(self.backend, refs)

    def unmap(self, name: str) -> None:
        self.mappings.pop(name).close()

    def free(self, name: str) -> None:
        self.memory.pop(name).close()

    def pattern(self, name: str, offset: int, length: int, seed: int) -> bytes:
        data = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
        self.write(name, offset, data)
        return data


def restartable_backend(hv: Hypervisor, control: Connection, *args: str) -> None:
    """The backend service; after "stop" it waits for "start" to run again (a restart)."""
    while True:
        backend_domain.run(hv, control, *args)
        try:
            if control.recv() != "start":
                return
        except EOFError:
            return


@dataclass
class _Transport:
    ring_memory: GuestMemory
    ring_view: memoryview
    ring: FrontRing
    event_memory: GuestMemory
    req_port: int
    evt_port: int
    in_cons: int = 0


class XenbusFrontend(FrontendAgent):
    """A frontend speaking XenStore, rings and event channels, built on the wire codecs."""

    def __init__(self, hv: Hypervisor, xenstore_dir: str, backend: int) -> None:
        super().__init__(hv, backend)
        self.xs = Client(f"{xenstore_dir}/domain/{hv.domid}")
        self.front = xenbus.frontend_path(hv.domid, "vdispl", 0)
        self.back = xenbus.backend_path(backend, "vdispl", hv.domid, 0)
        self.transports: list[_Transport] = []

    def backend_state(self) -> int:
        try:
            return int(self.xs.read(f"{self.back}/state"))
        except FileNotFoundError:
            return 0

    def wait_backend_state(self, state: int, timeout: float = 20.0) -> int:
        with self.xs.watch(f"{self.back}/state") as watch:
            deadline = time.monotonic() + timeout
            while self.backend_state() != state and time.monotonic() < deadline:
                watch.get(0.5)
        return self.backend_state()

    def set_state(self, state: int) -> None:
        self.xs.write(f"{self.front}/state", str(state))

    def connect(
        self,
        connectors: int,
        version: str = "2",
        answer: int = xenbus.XenbusState.CONNECTED,
        queued: bytes | None = None,
    ) -> int:
        """Publish fresh transports, go Initialised, and wait for the backend to `answer`.

        With `queued`, each ring is filled with that request before going Initialised.
        """
        self.drop_transports()
        self.set_state(xenbus.XenbusState.INITIALISING)
        assert self.wait_backend_state(xenbus.XenbusState.INIT_WAIT) == 2
        assert self.xs.read(f"{self.back}/versions") == b"1,2"
        if version:  # "": as Linux's xen-drm-front, which writes no version
            self.xs.write(f"{self.front}/version", version)
        for index in range(connectors):
            ring_memory, (ring_ref,) = self.hv.grants.share(self.backend, 1)
            with ring_memory.view() as view:
                init_shared_ring(view)
            event_memory, (evt_ref,) = self.hv.grants.share(self.backend, 1)
            event_memory.array()[:] = 0
            req_port = self.hv.events.bind_unbound_port(self.backend)
            evt_port = self.hv.events.bind_unbound_port(self.backend)
            base = f"{self.front}/{index}"
            self.xs.write(f"{base}/req-ring-ref", str(ring_ref))
            self.xs.write(f"{base}/req-event-channel", str(req_port))
            self.xs.write(f"{base}/evt-ring-ref", str(evt_ref))
            self.xs.write(f"{base}/evt-event-channel", str(evt_port))
            ring_view = ring_memory.view()
            ring = FrontRing(ring_view, displif.REQUEST_SIZE)
            self.transports.append(
                _Transport(ring_memory, ring_view, ring, event_memory, req_port, evt_port)
            )
            while queued is not None and ring.free_requests:
                self.post(index, queued)
        self.set_state(xenbus.XenbusState.INITIALISED)
        state = self.wait_backend_state(answer)
        if state == xenbus.XenbusState.CONNECTED:
            self.set_state(xenbus.XenbusState.CONNECTED)
        return state

    def drop_transports(self) -> None:
        for transport in self.transports:
            transport.ring.release()
            transport.ring_view.release()
            for port in (transport.req_port, transport.evt_port):
                self.hv.events.unbind(port)
            transport.ring_memory.close()
            transport.event_memory.close()
        self.transports.clear()

    def post(self, connector: int, slot: bytes) -> None:
        """Put one request on the ring and notify, without waiting."""
        transport = self.transports[connector]
        transport.ring.new_request()[:] = slot
        if transport.ring.push_requests():
            self.hv.events.notify(transport.req_port)

    def call(self, connector: int, slot: bytes, timeout: float = 10.0) -> bytes:
        """One request and its response (raw)."""
        self.post(connector, slot)
        return self.response(connector, timeout)

    def response(self, connector: int, timeout: float = 10.0) -> bytes:
        """The next response on the connector's ring (raw), waiting for it."""
        ring = self.transports[connector].ring
        deadline = time.monotonic() + timeout
        while (response := ring.take_response()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no response on connector {connector}")
            if not ring.final_check_for_responses():
                self.hv.events.pending(0.2)
        return response

    def events(self, connector: int, count: int, timeout: float = 10.0) -> list[bytes]:
        """Wait for `count` events on the connector's event page and consume them."""
        transport = self.transports[connector]
        found: list[bytes] = []
        deadline = time.monotonic() + timeout
        with transport.event_memory.view() as page:
            indices = displif.page_indices(page)
            try:
                while len(found) < count and time.monotonic() < deadline:
                    in_prod = indices.load(displif.IN_PROD_OFFSET)
                    while transport.in_cons != in_prod and len(found) < count:
                        found.append(displif.read_event(page, transport.in_cons).encode())
                        transport.in_cons += 1
                        indices.store(displif.IN_CONS_OFFSET, transport.in_cons)
                    if len(found) < count:
                        self.hv.events.pending(0.2)
            finally:
                indices.release()
        return found

    def rewrite_connector(self, index: int, nodes: dict[str, str]) -> None:
        """Remove connector directory `index` (the guest owns it) and write `nodes` in it.

        The toolstack's `resolution` and `unique-id` are read-only to the guest, but
        removing their parent removes them too.
        """
        self.xs.rm(f"{self.front}/{index}")
        for name, value in nodes.items():
            self.xs.write(f"{self.front}/{index}/{name}", value)

    def corrupt_ring(self, connector: int) -> None:
        """Publish a req_prod no honest frontend could reach, and notify."""
        transport = self.transports[connector]
        with transport.ring_memory.view() as view:
            struct.pack_into("<I", view, 0, transport.ring.req_prod_pvt + 1000)
        self.hv.events.notify(transport.req_port)
