"""The PV display frontend (the Linux xen-front role) as an asyncio API for guest programs.

    async with await Display.open(hv, xenstore_socket, devid=0) as display:
        connector = display.connectors[0]
        fb = await display.create_framebuffer(connector.width, connector.height, XRGB8888)
        fb.array()[:] = ...           # the shared pages themselves, no copy
        await connector.set_config(fb)
        await connector.flip(fb)      # PG_FLIP response and EVT_PG_FLIP event

The protocol logic is `front_core` (sans-IO); this module is its I/O: XenStore through
`AsyncClient`, event channels through `hv.events.fileno()` on the event loop, and grants.
"""

import asyncio
import contextlib
import dataclasses
import errno as _errno
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Self, TypeVar, cast

import numpy as np
import numpy.typing as npt

from pvdisplay import logs, xenbus
from pvdisplay.display.front_core import (
    ConnectorChannel,
    FlipDone,
    FrontendStateMachine,
    Outcome,
    Reply,
    Step,
)
from pvdisplay.display.limits import LEGACY_UNIQUE_ID_FIELD, MAX_CONNECTORS
from pvdisplay.hv import GuestMemory, Hypervisor, HypervisorError, Mapping, PortState
from pvdisplay.hv.port_reader import PortReader
from pvdisplay.store.aio import AsyncClient, AsyncTransaction
from pvdisplay.wire import displif, edid
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.fourcc import PixelFormat
from pvdisplay.wire.ring import RingFullError, init_shared_ring
from pvdisplay.xenbus import XenbusState

log = logging.getLogger(__name__)

T = TypeVar("T")

KIND = displif.DRIVER_NAME
REQUEST_TIMEOUT = 3.0
"""Seconds to wait for a response (xen-front's XEN_DRM_FRONT_WAIT_BACK_MS)."""
FLIP_TIMEOUT = 3.1
"""Seconds from a PG_FLIP request to its EVT_PG_FLIP (xen-front's FRAME_DONE_TO_MS)."""
CLOSE_TIMEOUT = 3.0
"""Seconds `close()` waits for the backend to let go of the device before leaving."""
SUPPORTED_VERSIONS = (1, 2)
EDID_MIN_VERSION = 2


class DisplayError(OSError):
    """The backend refused an operation, or the device cannot carry it out.

    `.errno` is positive, `.status` the negative errno a displif response carries, and
    `.operation` names what failed ("DBUF_CREATE", "PG_FLIP", "EVT_PG_FLIP", ...).
    """

    def __init__(self, operation: str, errno: int, message: str) -> None:
        name = _errno.errorcode.get(errno, str(errno))
        super().__init__(errno, f"{operation}: {message} [{name}]")
        self.operation = operation

    @property
    def status(self) -> int:
        return -int(self.errno or _errno.EIO)

    def __str__(self) -> str:
        return str(self.strerror)


class DisplayTimeoutError(DisplayError, TimeoutError):
    """The backend did not answer in time (ETIMEDOUT)."""

    def __init__(self, operation: str, seconds: float) -> None:
        super().__init__(operation, _errno.ETIMEDOUT, f"no answer from the backend in {seconds} s")


class DisplayLostError(DisplayError):
    """The connection this object belonged to is gone (ENODEV): the backend went away."""

    def __init__(self, operation: str, message: str = "the backend connection is gone") -> None:
        super().__init__(operation, _errno.ENODEV, message)


@dataclass(frozen=True)
class ToolstackConfig:
    """What the toolstack wrote in the frontend directory."""

    backend_path: str
    backend_id: int
    be_alloc: bool
    connectors: tuple[tuple[str, int, int], ...]
    """(unique-id, width, height) per connector, from `<i>/unique-id` (or `<i>/id`, where
    older libxl wrote it; "" when neither is there) and `<i>/resolution`."""


async def read_config(xs: AsyncClient, front: str) -> ToolstackConfig:
    """Read a vdispl frontend directory as xen-front does: connectors 0.. until one lacks a
    `resolution`."""
    backend_path = (await xs.read(f"{front}/{xenbus.FIELD_BACKEND}")).decode()
    backend_id = int((await xs.read(f"{front}/{xenbus.FIELD_BACKEND_ID}")).decode())
    be_alloc = False
    with contextlib.suppress(FileNotFoundError):
        be_alloc = (await xs.read(f"{front}/{displif.FIELD_BE_ALLOC}")).decode() == "1"
    connectors = []
    for index in range(MAX_CONNECTORS):
        try:
            resolution = (await xs.read(f"{front}/{index}/{displif.FIELD_RESOLUTION}")).decode()
        except FileNotFoundError:
            break
        width, height = displif.parse_resolution(resolution)
        unique_id = ""
        for field in (displif.FIELD_UNIQUE_ID, LEGACY_UNIQUE_ID_FIELD):
            with contextlib.suppress(FileNotFoundError):
                unique_id = (await xs.read(f"{front}/{index}/{field}")).decode()
            if unique_id:
                break
        connectors.append((unique_id, width, height))
    if not connectors:
        raise DisplayError("config", _errno.ENODEV, f"{front} has no connector with a resolution")
    return ToolstackConfig(backend_path, backend_id, be_alloc, tuple(connectors))


@dataclass
class _Waiter(Generic[T]):
    future: "asyncio.Future[T]"
    timer: asyncio.TimerHandle
    operation: str


class _Transport:
    """One connection's ring, event page and event channels for a connector."""

    def __init__(self, hv: Hypervisor, backend_id: int) -> None:
        self.ring_memory, (self.ring_ref,) = hv.grants.share(backend_id, 1)
        self.event_memory, (self.event_ref,) = hv.grants.share(backend_id, 1)
        ring_view = self.ring_memory.view()
        init_shared_ring(ring_view)
        self.channel = ConnectorChannel(ring_view, self.event_memory.view())
        del ring_view
        self.req_port = hv.events.bind_unbound_port(backend_id)
        self.evt_port = hv.events.bind_unbound_port(backend_id)

    def close(self, hv: Hypervisor) -> None:
        for port in (self.req_port, self.evt_port):
            PortReader.unbind(hv, port)
        self.channel.release()
        for memory in (self.ring_memory, self.event_memory):
            with contextlib.suppress(HypervisorError):
                memory.close()


class Connector:
    """A virtual display connector: its mode, its configuration and its page flips."""

    def __init__(
        self, display: "Display", index: int, unique_id: str, width: int, height: int
    ) -> None:
        self._display = display
        self.index = index
        self.unique_id = unique_id
        self.resolution = (width, height)
        self.edid: edid.EdidInfo | None = None
        """The backend's EDID (protocol 2); when present it defines the mode."""
        self._transport: _Transport | None = None
        self._waiters: dict[int, _Waiter[Reply]] = {}
        self._flips: dict[int, _Waiter[None]] = {}

    @property
    def width(self) -> int:
        return self.edid.width if self.edid is not None else self.resolution[0]

    @property
    def height(self) -> int:
        return self.edid.height if self.edid is not None else self.resolution[1]

    def __repr__(self) -> str:
        return f"<Connector {self.index} {self.unique_id!r} {self.width}x{self.height}>"

    async def set_config(self, fb: "Framebuffer | None", x: int = 0, y: int = 0) -> None:
        """Show `fb` at (x, y) on this connector (SET_CONFIG); None resets the display."""
        if fb is None:
            shown = displif.SetConfig(0, 0, 0, 0, 0, 0, 0)
        else:
            fb.check_usable("SET_CONFIG")
            bpp = fb.format.bits_per_pixel
            shown = displif.SetConfig(0, fb.fb_cookie, x, y, fb.width, fb.height, bpp)
        await self._display._request(
            self, "SET_CONFIG", lambda rid: dataclasses.replace(shown, id=rid)
        )

    def flip(self, fb: "Framebuffer") -> "asyncio.Future[None]":
        """Queue a page flip to `fb`; the future completes once the backend has shown it.

        Await it, or add a done callback. It fails with `DisplayError` if the backend
        refuses, `DisplayTimeoutError` after REQUEST_TIMEOUT without a response or FLIP_TIMEOUT
        without the EVT_PG_FLIP event, and `DisplayLostError` if the backend goes away.
        """
        fb.check_usable("PG_FLIP")
        transport = self._display._transport_for(self, "PG_FLIP")
        loop = asyncio.get_running_loop()
        request_id = self._display._send(
            self, transport, "PG_FLIP", lambda rid: displif.PageFlip(rid, fb.fb_cookie)
        )
        done: asyncio.Future[None] = loop.create_future()
        self._flips[request_id] = _Waiter(
            done, loop.call_later(FLIP_TIMEOUT, self._flip_timed_out, request_id), "EVT_PG_FLIP"
        )
        self._waiters[request_id].future.add_done_callback(
            lambda reply: self._flip_replied(request_id, reply)
        )
        return done

    def _flip_replied(self, request_id: int, reply: "asyncio.Future[Reply]") -> None:
        if reply.cancelled():
            return
        # Read before anything else: when the connection is lost, `_fail_all` has already
        # failed the flip's waiter, and an error nobody reads is logged as never retrieved.
        error = reply.exception()
        waiter = self._flips.get(request_id)
        if waiter is None:
            return
        if error is None:
            status = reply.result().status
            if status != 0:
                error = _refused("PG_FLIP", status)
        if error is not None:
            del self._flips[request_id]
            waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _flip_timed_out(self, request_id: int) -> None:
        waiter = self._flips.pop(request_id, None)
        if waiter is None:
            return
        if self._transport is not None:
            self._transport.channel.forget_flip_event(request_id)
        log.warning("flip event timed out", extra=logs.fields(connector=self.index))
        if not waiter.future.done():
            waiter.future.set_exception(DisplayTimeoutError("EVT_PG_FLIP", FLIP_TIMEOUT))

    def _deliver(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, Reply):
                waiter = self._waiters.pop(outcome.request_id, None)
                if waiter is not None:
                    waiter.timer.cancel()
                    if not waiter.future.done():
                        waiter.future.set_result(outcome)
            elif isinstance(outcome, FlipDone):
                flip = self._flips.pop(outcome.request_id, None)
                if flip is not None:
                    flip.timer.cancel()
                    if not flip.future.done():
                        flip.future.set_result(None)

    def _fail_all(self, make_error: Callable[[str], BaseException]) -> None:
        pending: list[_Waiter[Reply] | _Waiter[None]] = [
            *self._waiters.values(),
            *self._flips.values(),
        ]
        self._waiters.clear()
        self._flips.clear()
        for waiter in pending:
            waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_exception(make_error(waiter.operation))


def _refused(operation: str, status: int) -> DisplayError:
    code = -status if status < 0 else _errno.EIO
    return DisplayError(operation, code, f"refused by the backend (status {status})")


class Framebuffer:
    """A dumb display buffer with one framebuffer on it, in one of the nine formats.

    `array()` is the shared pages themselves (height rows of `pitch` bytes). Drop every
    array before `close()`: pages still referenced cannot be given back (EBUSY).
    """

    def __init__(
        self,
        display: "Display",
        width: int,
        height: int,
        pixel_format: PixelFormat,
        generation: int,
    ) -> None:
        self._display = display
        self.width = width
        self.height = height
        self.format = pixel_format
        self.pitch = pixel_format.min_pitch(width)
        self.size = self.pitch * height
        self.dbuf_cookie = display._new_cookie()
        self.fb_cookie = display._new_cookie()
        self.backend_allocated = display.be_alloc
        self._generation = generation
        self._directory: GuestMemory | None = None
        self._pixels: GuestMemory | Mapping | None = None
        self._created = False
        self._attached = False
        self._closed = False

    @property
    def lost(self) -> bool:
        """True once the connection it was created on is gone; only `close()` remains."""
        return self._generation != self._display._generation

    def array(self) -> npt.NDArray[np.uint8]:
        """A (height, pitch) uint8 view of the shared pixel pages; no copy is made."""
        if self._pixels is None or self._closed:
            raise DisplayError("array", _errno.EBADF, "framebuffer is closed")
        pixels = self._pixels.array(np.uint8, (self.height, self.pitch))
        return cast("npt.NDArray[np.uint8]", pixels)

    def check_usable(self, operation: str) -> None:
        if self._closed or not self._attached:
            raise DisplayError(operation, _errno.EBADF, "framebuffer is closed")
        if self.lost:
            raise DisplayLostError(operation, "framebuffer belongs to a lost backend connection")

    def __repr__(self) -> str:
        return (
            f"<Framebuffer {self.width}x{self.height} {self.format.name} "
            f"fb_cookie={self.fb_cookie:#x}>"
        )

    async def close(self) -> None:
        """FB_DETACH and DBUF_DESTROY (when still connected), then free the pages."""
        if self._closed:
            return
        display = self._display
        live = not self.lost and display._connected.is_set()
        if live and self._attached:
            self._attached = False
            await display._request_or_lost(
                "FB_DETACH", lambda rid: displif.FbDetach(rid, self.fb_cookie)
            )
        if self.backend_allocated:
            self._close_pixels()  # xen-front unmaps the backend's pages before DBUF_DESTROY
        if live and self._created:
            self._created = False
            await display._request_or_lost(
                "DBUF_DESTROY", lambda rid: displif.DbufDestroy(rid, self.dbuf_cookie)
            )
        self._close_pixels()
        if self._directory is not None:
            self._directory.close()
            self._directory = None
        self._closed = True
        display._client_gone(self)

    def _close_pixels(self) -> None:
        if self._pixels is not None:
            try:
                self._pixels.close()
            except HypervisorError as error:
                raise DisplayError("close", error.errno or _errno.EBUSY, str(error)) from None
            self._pixels = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _create(self) -> None:
        display = self._display
        hv, backend = display._hv, display.config.backend_id
        data_pages = displif.grefs_for_buffer(self.size)
        directory_pages = displif.directory_pages_for(data_pages)
        self._directory = hv.grants.alloc(directory_pages)
        directory_refs = hv.grants.grant(backend, self._directory, list(range(directory_pages)))
        if self.backend_allocated:
            data_refs = [0] * data_pages
            flags = displif.DBUF_FLG_REQ_ALLOC
        else:
            memory = hv.grants.alloc(data_pages)
            self._pixels = memory
            data_refs = hv.grants.grant(backend, memory, list(range(data_pages)))
            flags = 0
        with self._directory.view() as directory:
            pages = displif.encode_page_directory(data_refs, directory_refs)
            for number, page in enumerate(pages):
                directory[number * displif.PAGE_SIZE : (number + 1) * displif.PAGE_SIZE] = page
        bpp = self.format.bits_per_pixel
        await display._request(
            display.connectors[0],
            "DBUF_CREATE",
            lambda rid: displif.DbufCreate(
                rid, self.dbuf_cookie, self.width, self.height, bpp, self.size, flags,
                directory_refs[0], 0,
            ),
        )  # fmt: skip
        self._created = True
        if self.backend_allocated:
            self._pixels = self._map_backend_pages(directory_refs, data_pages)
        await display._request(
            display.connectors[0],
            "FB_ATTACH",
            lambda rid: displif.FbAttach(
                rid, self.dbuf_cookie, self.fb_cookie, self.width, self.height, self.format.fourcc
            ),
        )
        self._attached = True

    def _map_backend_pages(self, directory_refs: list[int], data_pages: int) -> Mapping:
        """Read the refs the backend wrote into our directory, then map them."""
        assert self._directory is not None
        reader = displif.PageDirectoryReader(data_pages)
        try:
            with self._directory.view() as directory:
                for number in range(len(directory_refs)):
                    page = bytes(directory[number * displif.PAGE_SIZE :][: displif.PAGE_SIZE])
                    following = reader.feed(page)
                    expected = (
                        directory_refs[number + 1] if number + 1 < len(directory_refs) else None
                    )
                    if following != expected:
                        raise ProtocolError(_errno.EIO, "backend rewrote the directory chain")
            return self._display._hv.grants.map(self._display.config.backend_id, reader.grefs)
        except (ProtocolError, HypervisorError) as error:
            raise DisplayError(
                "DBUF_CREATE", _errno.EIO, f"cannot map the backend's buffer: {error}"
            ) from None


class Display:
    """One vdispl device of this guest, from `Display.open` until `close()`.

    The device follows displif.h's XenBus state diagrams on its own: it connects when the
    backend is ready, and when the backend goes away it moves to Reconfiguring, fails what
    is in flight with `DisplayLostError`, waits until every framebuffer of the old connection
    is closed, moves to Initialising and connects again when the backend comes back.
    """

    def __init__(
        self, hv: Hypervisor, xs: AsyncClient, devid: int, config: ToolstackConfig
    ) -> None:
        self._hv = hv
        self._xs = xs
        self.devid = devid
        self.config = config
        self.path = xenbus.frontend_path(hv.domid, KIND, devid)
        self.be_alloc = config.be_alloc
        self.version: int | None = None
        self.connectors = tuple(
            Connector(self, index, *connector) for index, connector in enumerate(config.connectors)
        )
        self._machine = FrontendStateMachine()
        self._inputs: asyncio.Queue[Callable[[], list[Step]]] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()
        self._failure: BaseException | None = None
        self._generation = 0
        self._clients: set[Framebuffer] = set()
        self._cookies: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- public -----------------------------------------------------------------------

    @classmethod
    async def open(cls, hv: Hypervisor, xenstore_socket: str, devid: int = 0) -> "Display":
        """Connect to XenStore, read the device config and wait until the device is Connected."""
        xs = await AsyncClient.connect(xenstore_socket)
        try:
            front = xenbus.frontend_path(hv.domid, KIND, devid)
            display = cls(hv, xs, devid, await read_config(xs, front))
        except BaseException:
            await xs.close()
            raise
        display._start()
        try:
            await display.wait_connected()
        except BaseException:
            await display.close()
            raise
        return display

    @property
    def state(self) -> XenbusState:
        """The frontend's XenBus state as last written."""
        return self._machine.state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once the device is Connected (at once if it is); raise if it failed."""
        while not self._connected.is_set():
            if self._failure is not None:
                raise self._failure
            self._changed.clear()
            await self._changed.wait()
        if self._failure is not None:
            raise self._failure

    async def wait_state(self, state: XenbusState) -> None:
        """Return once the frontend has written `state` (for supervision and tests)."""
        while self._machine.state != state:
            if self._failure is not None:
                raise self._failure
            self._changed.clear()
            await self._changed.wait()

    async def create_framebuffer(
        self, width: int, height: int, pixel_format: PixelFormat
    ) -> Framebuffer:
        """DBUF_CREATE (frontend- or backend-allocated per `be-alloc`), then FB_ATTACH."""
        if width <= 0 or height <= 0:
            raise DisplayError("DBUF_CREATE", _errno.EINVAL, f"bad size {width}x{height}")
        if not self._connected.is_set() or not self._machine.accepts_clients:
            raise DisplayLostError("DBUF_CREATE", f"device is {self._machine.state.name}")
        fb = Framebuffer(self, width, height, pixel_format, self._generation)
        self._machine.client_added()
        self._clients.add(fb)
        try:
            await fb._create()
        except BaseException:
            with contextlib.suppress(DisplayError, HypervisorError):
                await fb.close()
            self._client_gone(fb)
            raise
        return fb

    async def close(self) -> None:
        """Close every framebuffer, tell the backend (Closing), then leave (Closed)."""
        if self._closed:
            return
        self._closed = True
        for fb in list(self._clients):
            with contextlib.suppress(DisplayError):
                await fb.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(OSError, ConnectionError):
            await self._close_handshake()
        self._free_transports()
        self._connected.clear()
        self._machine.closed()
        with contextlib.suppress(OSError, ConnectionError):
            await self._write_state(XenbusState.CLOSED)
        await self._xs.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the state machine driver -----------------------------------------------------

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._drive()))
        self._tasks.append(loop.create_task(self._watch_backend()))

    async def _watch_backend(self) -> None:
        state_path = f"{self.config.backend_path}/{xenbus.FIELD_STATE}"
        try:
            watch = await self._xs.watch(state_path)
            async for _event in watch:
                state = await self._read_backend_state(state_path)
                self._inputs.put_nowait(functools.partial(self._machine.backend_changed, state))
        except (ConnectionError, OSError) as error:
            self._fail(DisplayError("xenstore", _errno.EIO, f"lost XenStore: {error}"))

    async def _read_backend_state(self, path: str) -> XenbusState | None:
        try:
            return xenbus.parse_state(await self._xs.read(path))
        except (FileNotFoundError, PermissionError):
            return None
        except ProtocolError:
            return XenbusState.UNKNOWN

    async def _drive(self) -> None:
        while True:
            steps = (await self._inputs.get())()
            for step in steps:
                try:
                    await self._carry_out(step)
                except (DisplayError, HypervisorError, ProtocolError, OSError) as error:
                    log.error(
                        "display device failed",
                        extra=logs.fields(path=self.path, step=step.value, error=error),
                    )
                    self._fail(error)
                    with contextlib.suppress(OSError, ConnectionError):
                        self._machine.closing()
                        await self._write_state(XenbusState.CLOSING)
                    return
            self._changed.set()

    async def _carry_out(self, step: Step) -> None:
        log.info("step", extra=logs.fields(path=self.path, step=step.value))
        match step:
            case Step.PUBLISH:
                await self._publish()
            case Step.CONNECT:
                await self._connect()
            case Step.RECONFIGURE:
                self._reconfigure()
                await self._write_state(XenbusState.RECONFIGURING)
            case Step.REINITIALISE:
                self._free_transports()
                await self._write_state(XenbusState.INITIALISING)

    async def _publish(self) -> None:
        backend = self.config.backend_path
        offered = displif.parse_versions(
            (await self._xs.read(f"{backend}/{displif.FIELD_BE_VERSIONS}")).decode()
        )
        common = [version for version in offered if version in SUPPORTED_VERSIONS]
        if not common:
            raise DisplayError(
                "version", _errno.EPROTONOSUPPORT, f"backend offers {offered}, we speak 1 and 2"
            )
        self.version = max(common)
        backend_id = self.config.backend_id
        for connector in self.connectors:
            connector._transport = _Transport(self._hv, backend_id)
            for port in (connector._transport.req_port, connector._transport.evt_port):
                PortReader.add(self._hv, port, functools.partial(self._on_port, connector))

        async def publish(txn: AsyncTransaction) -> None:
            await txn.write(f"{self.path}/{displif.FIELD_FE_VERSION}", str(self.version))
            for connector in self.connectors:
                transport = connector._transport
                assert transport is not None
                base = f"{self.path}/{connector.index}"
                await txn.write(f"{base}/{displif.FIELD_REQ_RING_REF}", str(transport.ring_ref))
                await txn.write(f"{base}/{displif.FIELD_REQ_CHANNEL}", str(transport.req_port))
                await txn.write(f"{base}/{displif.FIELD_EVT_RING_REF}", str(transport.event_ref))
                await txn.write(f"{base}/{displif.FIELD_EVT_CHANNEL}", str(transport.evt_port))

        await self._xs.transact(publish)
        await self._write_state(XenbusState.INITIALISED)

    async def _connect(self) -> None:
        for connector in self.connectors:
            connector.edid = None
            if self.version is not None and self.version >= EDID_MIN_VERSION:
                connector.edid = await self._read_edid(connector)
        self._connected.set()
        await self._write_state(XenbusState.CONNECTED)
        log.info(
            "connected",
            extra=logs.fields(
                path=self.path,
                version=self.version,
                modes=",".join(f"{c.width}x{c.height}" for c in self.connectors),
            ),
        )

    async def _read_edid(self, connector: Connector) -> edid.EdidInfo | None:
        """GET_EDID into granted pages; any refusal leaves the `resolution` mode."""
        pages = displif.grefs_for_buffer(displif.EDID_MAX_SIZE)
        backend = self.config.backend_id
        grants = self._hv.grants
        with grants.alloc(pages) as buffer, grants.alloc(1) as directory:
            refs = grants.grant(backend, buffer, list(range(pages)))
            (directory_ref,) = grants.grant(backend, directory, [0])
            with directory.view() as page:
                page[:] = displif.encode_page_directory(refs, [directory_ref])[0]
            try:
                reply = await self._request(
                    connector,
                    "GET_EDID",
                    lambda rid: displif.GetEdid(rid, displif.EDID_MAX_SIZE, directory_ref),
                )
                if not 0 < reply.edid_sz <= displif.EDID_MAX_SIZE:
                    raise ProtocolError(_errno.EIO, f"edid_sz {reply.edid_sz}")
                with buffer.view() as data:
                    return edid.parse_edid(bytes(data[: reply.edid_sz]))
            except (DisplayError, ProtocolError) as error:
                if isinstance(error, DisplayLostError):
                    raise
                log.info(
                    "no EDID; using resolution",
                    extra=logs.fields(connector=connector.index, error=error),
                )
                return None

    def _reconfigure(self) -> None:
        self._connected.clear()
        self._generation += 1
        for connector in self.connectors:
            connector._fail_all(DisplayLostError)
            if connector._transport is not None:
                for port in (connector._transport.req_port, connector._transport.evt_port):
                    PortReader.remove(self._hv, port)

    def _free_transports(self) -> None:
        for connector in self.connectors:
            connector._fail_all(DisplayLostError)
            if connector._transport is not None:
                connector._transport.close(self._hv)
                connector._transport = None

    async def _close_handshake(self) -> None:
        """xen-front's remove: Closing, then wait for the backend to let go of the device."""
        if self._machine.state not in (XenbusState.INITIALISED, XenbusState.CONNECTED):
            return
        self._machine.closing()
        await self._write_state(XenbusState.CLOSING)
        state_path = f"{self.config.backend_path}/{xenbus.FIELD_STATE}"
        let_go = (None, XenbusState.INIT_WAIT, XenbusState.CLOSED, XenbusState.UNKNOWN)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                async with await self._xs.watch(state_path) as watch:
                    async for _event in watch:
                        if await self._read_backend_state(state_path) in let_go:
                            return

    async def _write_state(self, state: XenbusState) -> None:
        await self._xs.write(f"{self.path}/{xenbus.FIELD_STATE}", state.encode())
        log.info("state", extra=logs.fields(path=self.path, state=state.name))
        self._changed.set()

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._connected.clear()
        for connector in self.connectors:
            connector._fail_all(DisplayLostError)
        self._changed.set()

    # -- requests ---------------------------------------------------------------------

    def _on_port(self, connector: Connector, port: int) -> None:
        transport = connector._transport
        if transport is None:
            return
        try:
            connector._deliver(transport.channel.receive())
            unbound = self._hv.events.status(port).state is PortState.UNBOUND
        except (ProtocolError, HypervisorError) as error:
            log.error(
                "backend broke the protocol",
                extra=logs.fields(connector=connector.index, error=error),
            )
            unbound = True
        if unbound:
            log.warning("backend gone", extra=logs.fields(path=self.path, port=port))
            for stale in (transport.req_port, transport.evt_port):
                PortReader.remove(self._hv, stale)
            self._inputs.put_nowait(self._machine.connection_lost)

    def _transport_for(self, connector: Connector, operation: str) -> _Transport:
        if self._failure is not None:
            raise DisplayLostError(operation, f"device failed: {self._failure}")
        transport = connector._transport
        if transport is None or self._machine.state != XenbusState.CONNECTED:
            raise DisplayLostError(operation, f"device is {self._machine.state.name}")
        return transport

    def _send(
        self,
        connector: Connector,
        transport: _Transport,
        operation: str,
        build: Callable[[int], displif.Request],
    ) -> int:
        try:
            request_id, notify = transport.channel.send(build)
        except RingFullError:
            raise DisplayError(operation, _errno.EBUSY, "every ring slot is in flight") from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        connector._waiters[request_id] = _Waiter(
            future,
            loop.call_later(REQUEST_TIMEOUT, self._timed_out, connector, request_id),
            operation,
        )
        if notify:
            self._hv.events.notify(transport.req_port)
        return request_id

    def _timed_out(self, connector: Connector, request_id: int) -> None:
        waiter = connector._waiters.pop(request_id, None)
        if waiter is None:
            return
        if connector._transport is not None:
            connector._transport.channel.forget(request_id)
        log.warning(
            "request timed out",
            extra=logs.fields(connector=connector.index, operation=waiter.operation),
        )
        if not waiter.future.done():
            waiter.future.set_exception(DisplayTimeoutError(waiter.operation, REQUEST_TIMEOUT))

    async def _request(
        self, connector: Connector, operation: str, build: Callable[[int], displif.Request]
    ) -> Reply:
        """Send one request and wait for its response; a refusal raises DisplayError."""
        transport = self._transport_for(connector, operation)
        request_id = self._send(connector, transport, operation, build)
        reply = await connector._waiters[request_id].future
        assert isinstance(reply, Reply)
        if reply.status != 0:
            raise _refused(operation, reply.status)
        return reply

    async def _request_or_lost(
        self, operation: str, build: Callable[[int], displif.Request]
    ) -> None:
        """A release request: a backend that went away meanwhile has released it anyway."""
        with contextlib.suppress(DisplayLostError):
            await self._request(self.connectors[0], operation, build)

    def _new_cookie(self) -> int:
        while True:
            cookie = secrets.randbits(64)
            if cookie and cookie not in self._cookies:
                self._cookies.add(cookie)
                return cookie

    def _client_gone(self, fb: Framebuffer) -> None:
        if fb not in self._clients:
            return
        self._clients.discard(fb)
        self._cookies.discard(fb.dbuf_cookie)
        self._cookies.discard(fb.fb_cookie)
        self._inputs.put_nowait(self._machine.client_removed)


def run(
    hv: Hypervisor,
    xenstore_socket: str,
    main: Callable[[Display], Awaitable[T]],
    devid: int = 0,
) -> T:
    """Open the device, run `main(display)` on a fresh event loop, close the device."""

    async def session() -> T:
        async with await Display.open(hv, xenstore_socket, devid) as display:
            return await main(display)

    return asyncio.run(session())
