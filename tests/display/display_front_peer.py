"""Peers for the frontend tests: a test-only displif backend and a scriptable guest.

`backend` is a minimal backend built on the wire codecs, run as a real domain. Its
`mode` makes it misbehave on purpose: "silent" never answers, "no-events" answers but
never sends EVT_PG_FLIP, "v1" offers protocol 1 only. `guest` runs the frontend library
in a real domain and executes the steps a test sends over its control connection.
`Rig` starts xenstored, the hypervisor host and writes the toolstack's nodes.
This module holds no tests.
"""

import asyncio
import contextvars
import errno
import functools
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVarTuple

from pvdisplay import toolstack, xenbus
from pvdisplay.display.front import Display, DisplayError, Framebuffer
from pvdisplay.guests.pattern import draw
from pvdisplay.hv import Hypervisor, Mapping
from pvdisplay.hv.local.launcher import DomainLauncher, DomainProcess
from pvdisplay.store.client import Client
from pvdisplay.wire import displif, edid, fourcc
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.ring import BackRing
from pvdisplay.xenbus import XenbusState
from rigs import PATIENCE

Ts = TypeVarTuple("Ts")

KIND = displif.DRIVER_NAME
REPLY_TIMEOUT = 60.0
BACKEND_DOMID = 0
PVDISPLAY = Path(sys.executable).with_name("pvdisplay")

# ----------------------------------------------------------------- test-only backend


@dataclass
class _Buffer:
    mapping: Mapping
    size: int
    memory: Any = None  # backend-allocated pages, owned here
    refs: list[int] = field(default_factory=list)


@dataclass
class _Fb:
    dbuf: int
    width: int
    height: int
    fmt: fourcc.PixelFormat


class _Connection:
    """One frontend connection: maps its rings, answers its requests."""

    def __init__(self, hv: Hypervisor, xs: Client, front: str, fe: int, mode: str) -> None:
        self.hv, self.fe, self.mode = hv, fe, mode
        self.version = int(xs.read(f"{front}/{displif.FIELD_FE_VERSION}"))
        self.connectors: list[dict[str, Any]] = []
        index = 0
        while xs.exists(f"{front}/{index}/{displif.FIELD_RESOLUTION}"):
            base = f"{front}/{index}"
            width, height = displif.parse_resolution(xs.read(f"{base}/resolution").decode())
            ring = hv.grants.map(fe, [int(xs.read(f"{base}/{displif.FIELD_REQ_RING_REF}"))])
            events = hv.grants.map(fe, [int(xs.read(f"{base}/{displif.FIELD_EVT_RING_REF}"))])
            req_port = hv.events.bind_interdomain(
                fe, int(xs.read(f"{base}/{displif.FIELD_REQ_CHANNEL}"))
            )
            evt_port = hv.events.bind_interdomain(
                fe, int(xs.read(f"{base}/{displif.FIELD_EVT_CHANNEL}"))
            )
            events_view = events.view()
            self.connectors.append(
                {
                    "width": width,
                    "height": height,
                    "unique_id": _unique_id(xs, base),
                    "ring_mapping": ring,
                    "ring": BackRing(ring.view(), displif.REQUEST_SIZE),
                    "events_mapping": events,
                    "events": events_view,
                    "event_indices": displif.page_indices(events_view),
                    "req_port": req_port,
                    "evt_port": evt_port,
                    "event_id": 0,
                    "shown": None,
                }
            )
            index += 1
        self.buffers: dict[int, _Buffer] = {}
        self.fbs: dict[int, _Fb] = {}

    def serve(self, fired: list[int]) -> None:
        for connector in self.connectors:
            if connector["req_port"] not in fired:
                continue
            ring: BackRing = connector["ring"]
            while True:
                while (raw := ring.take_request()) is not None:
                    if self.mode == "silent":
                        continue
                    header = displif.decode_request_header(raw)
                    try:
                        status, edid_sz = self._handle(connector, displif.decode_request(raw))
                    except ProtocolError as error:
                        status, edid_sz = error.status, 0
                    ring.new_response()[:] = displif.Response(
                        header.id, header.operation, status, edid_sz
                    ).encode()
                    if ring.push_responses():
                        self.hv.events.notify(connector["req_port"])
                    self._after(connector, raw, status)
                if not ring.final_check_for_requests():
                    break

    def _after(self, connector: dict[str, Any], raw: bytes, status: int) -> None:
        request = displif.decode_request(raw)
        if isinstance(request, displif.PageFlip) and status == 0 and self.mode != "no-events":
            page, indices = connector["events"], connector["event_indices"]
            prod = indices.load(displif.IN_PROD_OFFSET)
            event = displif.PageFlipEvent(connector["event_id"], request.fb_cookie)
            displif.write_event(page, prod, event.encode())
            connector["event_id"] = (connector["event_id"] + 1) & 0xFFFF
            indices.store(displif.IN_PROD_OFFSET, prod + 1)
            self.hv.events.notify(connector["evt_port"])

    def _walk_directory(self, first: int, pages: int) -> tuple[list[int], list[int]]:
        reader = displif.PageDirectoryReader(pages)
        directory_refs, ref = [first], first
        while True:
            with (
                self.hv.grants.map(self.fe, [ref], writable=False) as page,
                page.view() as view,
            ):
                following = reader.feed(bytes(view))
            if following is None:
                return reader.grefs, directory_refs
            directory_refs.append(following)
            ref = following

    def _handle(self, connector: dict[str, Any], request: displif.Request) -> tuple[int, int]:
        match request:
            case displif.DbufCreate():
                if request.dbuf_cookie in self.buffers:
                    return -errno.EEXIST, 0
                pages = displif.grefs_for_buffer(request.buffer_sz)
                if request.backend_allocates:
                    memory, refs = self.hv.grants.share(self.fe, pages)
                    _, directory_refs = self._walk_directory(request.gref_directory, pages)
                    for page, ref in zip(
                        displif.encode_page_directory(refs, directory_refs),
                        directory_refs,
                        strict=True,
                    ):
                        with self.hv.grants.map(self.fe, [ref]) as mapped, mapped.view() as view:
                            view[:] = page
                    self.buffers[request.dbuf_cookie] = _Buffer(
                        memory, request.buffer_sz, memory, refs
                    )
                else:
                    refs, _ = self._walk_directory(request.gref_directory, pages)
                    mapping = self.hv.grants.map(self.fe, refs, writable=False)
                    self.buffers[request.dbuf_cookie] = _Buffer(mapping, request.buffer_sz)
                return 0, 0
            case displif.DbufDestroy():
                buffer = self.buffers.pop(request.dbuf_cookie, None)
                if buffer is None:
                    return -errno.ENOENT, 0
                if buffer.memory is None:
                    buffer.mapping.close()
                else:
                    self.hv.grants.end_access(buffer.refs)
                    buffer.memory.close()
                return 0, 0
            case displif.FbAttach():
                fmt = fourcc.by_fourcc(request.pixel_format)
                buffer = self.buffers.get(request.dbuf_cookie)
                if buffer is None:
                    return -errno.ENOENT, 0
                if buffer.size < fmt.min_pitch(request.width) * request.height:
                    return -errno.EINVAL, 0
                if request.fb_cookie in self.fbs:
                    return -errno.EEXIST, 0
                self.fbs[request.fb_cookie] = _Fb(
                    request.dbuf_cookie, request.width, request.height, fmt
                )
                return 0, 0
            case displif.FbDetach():
                return (0, 0) if self.fbs.pop(request.fb_cookie, None) else (-errno.ENOENT, 0)
            case displif.SetConfig():
                if request.is_reset:
                    connector["shown"] = None
                    return 0, 0
                if request.fb_cookie not in self.fbs:
                    return -errno.ENOENT, 0
                if (
                    request.x + request.width > connector["width"]
                    or request.y + request.height > connector["height"]
                ):
                    return -errno.EINVAL, 0
                connector["shown"] = request.fb_cookie
                return 0, 0
            case displif.PageFlip():
                if request.fb_cookie not in self.fbs:
                    return -errno.ENOENT, 0
                connector["shown"] = request.fb_cookie
                return 0, 0
            case displif.GetEdid():
                block = edid.build_edid(
                    connector["width"], connector["height"], unique_id=connector["unique_id"]
                )
                refs, _ = self._walk_directory(
                    request.gref_directory, displif.grefs_for_buffer(request.buffer_sz)
                )
                with self.hv.grants.map(self.fe, refs) as mapped, mapped.view() as view:
                    view[: len(block)] = block
                return 0, len(block)
        return -errno.EINVAL, 0

    def frame(self, index: int) -> dict[str, Any] | None:
        """What connector `index` shows: its format and bytes (a copy, for the test)."""
        cookie = self.connectors[index]["shown"]
        if cookie is None:
            return None
        fb = self.fbs[cookie]
        buffer = self.buffers[fb.dbuf]
        pitch = fb.fmt.min_pitch(fb.width)
        with buffer.mapping.view() as view:
            data = bytes(view[: pitch * fb.height])
        return {"format": fb.fmt.name, "width": fb.width, "height": fb.height, "data": data}

    def close(self) -> None:
        for buffer in self.buffers.values():
            if buffer.memory is None:
                buffer.mapping.close()
            else:
                buffer.memory.close()
        for connector in self.connectors:
            for port in (connector["req_port"], connector["evt_port"]):
                self.hv.events.unbind(port)
            connector["ring"].release()
            connector["event_indices"].release()
            connector["events"].release()
            connector["ring_mapping"].close()
            connector["events_mapping"].close()


def backend(  # noqa: PLR0917 (a domain entry takes its arguments as DomainLauncher.start_domain passes them)
    hv: Hypervisor, control: Connection, xenstore_dir: str, frontend: str, devid: str, mode: str
) -> None:
    """Domain entry: serve one vdispl device, reconnecting whenever the frontend comes back."""
    fe = int(frontend)
    front = xenbus.frontend_path(fe, KIND, int(devid))
    back = xenbus.backend_path(hv.domid, KIND, fe, int(devid))
    with Client(Path(xenstore_dir) / "socket") as xs:
        xs.write(f"{back}/{displif.FIELD_BE_VERSIONS}", "1" if mode in ("v1", "silent") else "1,2")
        with xs.watch(f"{front}/{xenbus.FIELD_STATE}") as watch:
            while True:
                xs.write(f"{back}/{xenbus.FIELD_STATE}", XenbusState.INIT_WAIT.encode())
                while _front_state(xs, front) != XenbusState.INITIALISED:
                    if _stopped(control):
                        return
                    watch.get(0.05)
                connection = _Connection(hv, xs, front, fe, mode)
                xs.write(f"{back}/{xenbus.FIELD_STATE}", XenbusState.CONNECTED.encode())
                control.send(("connected", connection.version))
                while _front_state(xs, front) in (
                    XenbusState.INITIALISED,
                    XenbusState.CONNECTED,
                ):
                    connection.serve(hv.events.pending(0.05))
                    while control.poll():
                        command = control.recv()
                        if command[0] == "stop":
                            return
                        control.send(connection.frame(command[1]))
                    watch.get(0)
                connection.close()
                control.send(("disconnected", int(_front_state(xs, front))))


def _unique_id(xs: Client, connector: str) -> str:
    for name in (displif.FIELD_UNIQUE_ID, toolstack.LEGACY_UNIQUE_ID_FIELD):
        if xs.exists(f"{connector}/{name}"):
            return xs.read(f"{connector}/{name}").decode()
    return ""


def _front_state(xs: Client, front: str) -> XenbusState:
    try:
        return xenbus.parse_state(xs.read(f"{front}/{xenbus.FIELD_STATE}"))
    except FileNotFoundError:  # the guest is gone and its nodes with it
        return XenbusState.CLOSED


def _stopped(control: Connection) -> bool:
    return control.poll() and control.recv()[0] == "stop"


# --------------------------------------------------------------------- scriptable guest


def _error(error: BaseException) -> tuple[str, str, int | None, str | None, str]:
    return (
        "error",
        type(error).__name__,
        getattr(error, "errno", None),
        getattr(error, "operation", None),
        str(error),
    )


class _TimerLog(asyncio.SelectorEventLoop):
    """An event loop that notes the delay of every timer armed with `call_later`."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def call_later(
        self,
        delay: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        self.delays.append(delay)
        return super().call_later(delay, callback, *args, context=context)


def guest(hv: Hypervisor, control: Connection, xenstore_socket: str, devid: str) -> None:
    """Domain entry: run the frontend library, one step per control message.

    Step "timers" answers the delays of the timers armed since the last "timers".
    """

    async def session() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, _TimerLog)
        display: Display | None = None
        framebuffers: dict[str, Framebuffer] = {}
        held: dict[str, Any] = {}
        while True:
            step, *args = await loop.run_in_executor(None, control.recv)
            try:
                match step:
                    case "open":
                        display = await Display.open(hv, xenstore_socket, int(devid))
                        result: Any = _describe(display)
                    case "describe":
                        assert display is not None
                        result = _describe(display)
                    case "create":
                        assert display is not None
                        key, width, height, name, seed = args
                        fb = await display.create_framebuffer(width, height, fourcc.by_name(name))
                        framebuffers[key] = fb
                        draw(fb, seed)
                        result = {"pitch": fb.pitch, "be": fb.backend_allocated}
                    case "config":
                        assert display is not None
                        index, key, x, y = args
                        target = None if key is None else framebuffers[key]
                        await display.connectors[index].set_config(target, x, y)
                        result = None
                    case "flip":
                        assert display is not None
                        index, key = args
                        await display.connectors[index].flip(framebuffers[key])
                        result = None
                    case "flip_callback":
                        assert display is not None
                        index, key = args
                        called: asyncio.Future[str] = loop.create_future()
                        display.connectors[index].flip(framebuffers[key]).add_done_callback(
                            functools.partial(_report_flip, called)
                        )
                        result = await called
                    case "hold_array":
                        held[args[0]] = framebuffers[args[0]].array()
                        result = None
                    case "drop_array":
                        del held[args[0]]
                        result = None
                    case "close_fb":
                        await framebuffers[args[0]].close()
                        del framebuffers[args[0]]
                        result = None
                    case "wait_state":
                        assert display is not None
                        await display.wait_state(XenbusState[args[0]])
                        result = display.state.name
                    case "wait_connected":
                        assert display is not None
                        await display.wait_connected()
                        result = _describe(display)
                    case "close":
                        assert display is not None
                        await display.close()
                        result = None
                    case "timers":
                        result, loop.delays = loop.delays, []
                    case "quit":
                        control.send(None)
                        return
                    case _:
                        raise ValueError(f"unknown step {step}")
            except (DisplayError, OSError, ValueError) as error:
                control.send(_error(error))
                continue
            control.send(("ok", result))

    with asyncio.Runner(loop_factory=_TimerLog) as runner:
        runner.run(session())


def _report_flip(called: "asyncio.Future[str]", done: "asyncio.Future[None]") -> None:
    called.set_result("ok" if done.exception() is None else repr(done.exception()))


def _describe(display: Display) -> dict[str, Any]:
    return {
        "state": display.state.name,
        "version": display.version,
        "be_alloc": display.be_alloc,
        "connectors": [
            {
                "unique_id": c.unique_id,
                "mode": (c.width, c.height),
                "edid": None if c.edid is None else (c.edid.width, c.edid.height),
            }
            for c in display.connectors
        ],
    }


class GuestError(Exception):
    def __init__(self, kind: str, errno: int | None, operation: str | None, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind, self.errno, self.operation = kind, errno, operation


class Guest:
    def __init__(self, domain: DomainProcess) -> None:
        self.domain = domain

    def __call__(self, step: str, *args: Any) -> Any:
        self.domain.control.send((step, *args))
        if not self.domain.control.poll(REPLY_TIMEOUT):
            raise TimeoutError(f"guest did not answer {step}")
        reply = self.domain.control.recv()
        if reply[0] == "error":
            raise GuestError(*reply[1:])
        return reply[1]


class Backend:
    def __init__(self, domain: DomainProcess) -> None:
        self.domain = domain

    def expect(self, what: str) -> Any:
        if not self.domain.control.poll(REPLY_TIMEOUT):
            raise TimeoutError(f"backend did not report {what}")
        message = self.domain.control.recv()
        assert message[0] == what, message
        return message[1]

    def frame(self, index: int) -> dict[str, Any] | None:
        self.domain.control.send(("frame", index))
        if not self.domain.control.poll(REPLY_TIMEOUT):
            raise TimeoutError("backend did not send the frame")
        frame: dict[str, Any] | None = self.domain.control.recv()
        return frame


# ------------------------------------------------------------------------------ rig


class Rig:
    """xenstored + hypervisor host + the toolstack's nodes for one guest's vdispl device."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.xenstore_dir = directory / "xenstore"
        self.daemon = subprocess.Popen([PVDISPLAY, "xenstored", "--socket-dir", self.xenstore_dir])
        self.xs = self._connect()
        self.host = DomainLauncher(on_domain_released=self._released)

    def _connect(self) -> Client:
        while True:
            if self.daemon.poll() is not None:
                raise RuntimeError("xenstored exited")
            try:
                return Client(self.xenstore_dir / "socket")
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)

    def _released(self, domid: int) -> None:
        if domid != BACKEND_DOMID:
            self.xs.release(domid)

    def add_guest(self, domid: int, device: toolstack.Vdispl) -> None:
        for plan in (toolstack.domain_nodes(domid, f"guest{domid}"),):
            self._apply(plan)
        self.xs.introduce(domid, 0, 1)
        self._apply(toolstack.vdispl_nodes(domid, device))

    def _apply(self, plan: toolstack.NodePlan) -> None:
        for path in plan.removals:
            if self.xs.exists(path):
                self.xs.rm(path)
        for write in plan.writes:
            self.xs.write(write.path, write.value)
            self.xs.set_permissions(write.path, list(write.permissions))

    def start_backend(self, fe: int, mode: str = "serve", devid: int = 0) -> Backend:
        if BACKEND_DOMID in self.host.domains:
            # The id is free again only once the broker has destroyed the old domain.
            assert self.host.wait_released(BACKEND_DOMID, PATIENCE)
        return Backend(
            self.host.start_domain(
                f"{__name__}:backend",
                str(self.xenstore_dir),
                str(fe),
                str(devid),
                mode,
                domid=BACKEND_DOMID,
            )
        )

    def start_guest(self, domid: int, devid: int = 0) -> Guest:
        return Guest(
            self.host.start_domain(
                f"{__name__}:guest",
                str(self.xenstore_dir / "domain" / str(domid)),
                str(devid),
                domid=domid,
            )
        )

    def front_state(self, fe: int, devid: int = 0) -> XenbusState:
        return xenbus.parse_state(
            self.xs.read(f"{xenbus.frontend_path(fe, KIND, devid)}/{xenbus.FIELD_STATE}")
        )

    def close(self) -> None:
        self.host.stop()
        self.xs.close()
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(PATIENCE)
