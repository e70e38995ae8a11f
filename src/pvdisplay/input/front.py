"""The PV input frontend (the Linux xen-kbdfront role) as an asyncio API for guest programs.

    async with await Keyboard.open(hv, xenstore_socket, devid=0) as keyboard:
        async for batch in keyboard:      # kbdif.Key, Motion, Position, MtDown, ... MtOrient
            ...

Events stay on the shared ring until the program reads them, so a program that stops
reading makes the backend drop (and count) input, pointer motion first and never a
release, instead of the guest buffering without bound. Reading advances `in_cons` and
notifies the backend, which then refills the ring. In-events of unknown type are
skipped, as kbdif.h asks.

Handshake (xen-kbdfront's): wait for the backend's InitWait, read its features and sizes
(`feature-abs-pointer`, `feature-raw-pointer`, `feature-multi-touch`, `width`, `height`,
`multi-touch-*`, `unique-id`), grant the zeroed page, bind an event channel, write
`page-gref`, `event-channel`, `request-abs-pointer`, `request-raw-pointer` and
`request-multi-touch` with state Initialised in one transaction, then Connected once the
backend is.

Backend restart (as the display frontend survives one): the backend leaving Connected
for InitWait, Initialising, Unknown or a missing state node ends the connection: the
channel is unbound, the grant ended, state Initialising; when the backend is (back) in
InitWait the handshake runs again on the same page. Reading just waits meanwhile; events
still unread on the ring when the connection ends can be read until the next handshake.
A dead backend's event channel turns unbound, but unlike the display frontend this one
waits for the state node to say what happened: a backend that disconnects a misbehaving
guest also unbinds first, then goes Closing. Closing or Closed means the backend closed
the device (as for xen-kbdfront): reading raises `InputLostError`.
"""

import asyncio
import contextlib
import enum
import errno
from typing import Self

from pvdisplay import xenbus
from pvdisplay.hv import Hypervisor, HypervisorError, PortState
from pvdisplay.hv.port_reader import PortReader
from pvdisplay.store.aio import AsyncClient, AsyncTransaction
from pvdisplay.wire import kbdif
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.xenbus import XenbusState

KIND = kbdif.DRIVER_NAME
CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 3.0
_U32 = 0xFFFFFFFF
_CLOSED_BY_BACKEND = (XenbusState.CLOSING, XenbusState.CLOSED)


class InputLostError(ConnectionError):
    """The backend closed the device, broke the ring protocol, or XenStore went away."""


class _Phase(enum.Enum):
    WAITING = "waiting for the backend's InitWait"
    PUBLISHED = "Initialised, waiting for the backend's Connected"
    CONNECTED = "connected"


# The backend states in which a published or connected device is still the same
# connection; any other state (or an unbound channel) means the backend was lost.
_LIVE_BACKEND_STATES = {
    _Phase.PUBLISHED: frozenset({XenbusState.INIT_WAIT, XenbusState.CONNECTED}),
    _Phase.CONNECTED: frozenset({XenbusState.CONNECTED}),
}


class Keyboard:
    """One vkbd device of this guest, from `Keyboard.open` until `close()`."""

    def __init__(
        self,
        hv: Hypervisor,
        xs: AsyncClient,
        devid: int,
        backend_path: str,
        *,
        absolute: bool,
        multi_touch: bool,
        raw_pointer: bool = False,
    ) -> None:
        self._hv = hv
        self._xs = xs
        self.devid = devid
        self.path = xenbus.frontend_path(hv.domid, KIND, devid)
        self.backend_path = backend_path
        self._want_absolute = absolute
        self._want_multi_touch = multi_touch
        self._want_raw_pointer = raw_pointer
        self.unique_id = ""
        self.width = self.height = 0
        self.abs_pointer = self.multi_touch = self.raw_pointer = False
        self.mt_width = self.mt_height = self.mt_contacts = 0
        self.skipped = 0
        """In-events of a type this frontend does not know, skipped."""
        self.connections = 0
        """Handshakes completed: 1 after `open`, one more after each backend restart."""
        self._backend_id = 0
        self._memory = hv.grants.alloc(1)
        self.page = self._memory.view()
        """The shared page itself (the ring indexes and slots), for diagnostics and tests."""
        self._indices = kbdif.page_indices(self.page)
        self.port: int | None = None
        self._ref: int | None = None
        self._phase = _Phase.WAITING
        self._ready = asyncio.Event()
        self._backend_changed = asyncio.Event()
        self._phase_changed = asyncio.Event()
        self._lost: InputLostError | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        hv: Hypervisor,
        xenstore_socket: str,
        devid: int = 0,
        absolute: bool = True,
        multi_touch: bool = True,
        *,
        raw_pointer: bool = False,
    ) -> "Keyboard":
        """Connect; ask for absolute pointer and multi-touch if wanted and offered, and for
        raw positions (0..0x7fff whatever `width`/`height` say) if wanted,
        offered and absolute."""
        xs = await AsyncClient.connect(xenstore_socket)
        keyboard: Keyboard | None = None
        try:
            front = xenbus.frontend_path(hv.domid, KIND, devid)
            backend_path = (await xs.read(f"{front}/{xenbus.FIELD_BACKEND}")).decode()
            keyboard = cls(
                hv,
                xs,
                devid,
                backend_path,
                absolute=absolute,
                multi_touch=multi_touch,
                raw_pointer=raw_pointer,
            )
            keyboard._backend_id = int(await xs.read(f"{front}/{xenbus.FIELD_BACKEND_ID}"))
            keyboard._start()
            await asyncio.wait_for(keyboard.wait_connected(), CONNECT_TIMEOUT)
        except BaseException:
            if keyboard is not None:
                await keyboard.close()
            else:
                await xs.close()
            raise
        return keyboard

    @property
    def connected(self) -> bool:
        return self._phase is _Phase.CONNECTED

    async def wait_connected(self) -> None:
        """Until the device is connected; raises `InputLostError` if it never will be again."""
        while not self.connected:
            if self._lost is not None:
                raise self._lost
            self._phase_changed.clear()
            await self._phase_changed.wait()

    async def read(self) -> list[kbdif.InEvent]:
        """Every event waiting on the ring (at least one: waits for it, across reconnects)."""
        while True:
            events = self.take()
            if events:
                return events
            if self._lost is not None:
                raise self._lost
            self._ready.clear()
            await self._ready.wait()

    def take(self) -> list[kbdif.InEvent]:
        """The events waiting on the ring now, possibly none."""
        page, indices = self.page, self._indices
        # Acquire: no slot below is read before the in_prod that covers it.
        in_prod = indices.load(kbdif.IN_PROD_OFFSET)
        in_cons = indices.load(kbdif.IN_CONS_OFFSET)
        if (in_prod - in_cons) & _U32 > kbdif.IN_RING_LEN:
            self._fail(InputLostError(errno.EPROTO, f"backend published in_prod {in_prod}"))
            return []
        events: list[kbdif.InEvent] = []
        while in_cons != in_prod:
            try:
                events.append(kbdif.read_in_event(page, in_cons))
            except ProtocolError:
                self.skipped += 1
            in_cons = (in_cons + 1) & _U32
        if in_cons != indices.load(kbdif.IN_CONS_OFFSET):
            # Release: the slot copies above are done before the backend may reuse the slots.
            indices.store(kbdif.IN_CONS_OFFSET, in_cons)
            if self.port is not None:
                self._hv.events.notify(self.port)
        return events

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[kbdif.InEvent]:
        try:
            return await self.read()
        except InputLostError:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        """Closing, wait (briefly) for the backend to let go, Closed; free the page."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._fail(InputLostError(errno.ENODEV, "keyboard closed"))
        with contextlib.suppress(FileNotFoundError, ConnectionError, OSError):
            await self._write_state(XenbusState.CLOSING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wait_backend({*_CLOSED_BY_BACKEND, XenbusState.INIT_WAIT, None}),
                    CLOSE_TIMEOUT,
                )
            await self._write_state(XenbusState.CLOSED)
        self._disconnect()
        self._indices.release()
        self.page.release()
        with contextlib.suppress(HypervisorError):
            self._memory.close()
        await self._xs.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- following the backend ----------------------------------------------------------

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks += [
            loop.create_task(self._watch_backend()),
            loop.create_task(self._follow_backend()),
        ]

    async def _watch_backend(self) -> None:
        try:
            async with await self._xs.watch(f"{self.backend_path}/{xenbus.FIELD_STATE}") as watch:
                async for _ in watch:
                    self._backend_changed.set()
        except (ConnectionError, OSError) as error:
            self._fail(InputLostError(errno.EIO, f"lost XenStore: {error}"))

    async def _follow_backend(self) -> None:
        """The frontend state machine: one step per backend state change or channel loss."""
        try:
            while self._lost is None:
                await self._backend_changed.wait()
                self._backend_changed.clear()
                await self._step(await self._backend_state())
        except (ConnectionError, OSError, ProtocolError) as error:
            self._fail(InputLostError(errno.EIO, f"handshake failed: {error}"))

    async def _step(self, state: XenbusState | None) -> None:
        if state in _CLOSED_BY_BACKEND:
            self._fail(InputLostError(errno.ENODEV, f"backend is {state.name}"))
            return
        live = _LIVE_BACKEND_STATES.get(self._phase)
        if live is not None and state not in live:
            await self._reset()
        if self._phase is _Phase.WAITING and state is XenbusState.INIT_WAIT:
            await self._publish()
        if self._phase is _Phase.PUBLISHED and state is XenbusState.CONNECTED:
            await self._write_state(XenbusState.CONNECTED)
            self._set_phase(_Phase.CONNECTED)
            self.connections += 1

    async def _reset(self) -> None:
        """The connection is gone: free it and start over from Initialising."""
        self._disconnect()
        self._set_phase(_Phase.WAITING)
        await self._write_state(XenbusState.INITIALISING)

    async def _publish(self) -> None:
        back = self.backend_path
        self.unique_id = await self._read(f"{back}/{kbdif.FIELD_UNIQUE_ID}")
        self.width = await self._number(f"{back}/{kbdif.FIELD_WIDTH}")
        self.height = await self._number(f"{back}/{kbdif.FIELD_HEIGHT}")
        self.abs_pointer = (
            self._want_absolute
            and await self._read(f"{back}/{kbdif.FIELD_FEAT_ABS_POINTER}") == "1"
        )
        self.multi_touch = (
            self._want_multi_touch and await self._read(f"{back}/{kbdif.FIELD_FEAT_MTOUCH}") == "1"
        )
        self.raw_pointer = (
            self._want_raw_pointer
            and self.abs_pointer
            and await self._read(f"{back}/{kbdif.FIELD_FEAT_RAW_POINTER}") == "1"
        )
        if self.multi_touch:
            self.mt_width = await self._number(f"{back}/{kbdif.FIELD_MT_WIDTH}")
            self.mt_height = await self._number(f"{back}/{kbdif.FIELD_MT_HEIGHT}")
            self.mt_contacts = await self._number(f"{back}/{kbdif.FIELD_MT_NUM_CONTACTS}")
        self.page[:] = bytes(len(self.page))
        (self._ref,) = self._hv.grants.grant(self._backend_id, self._memory, [0])
        self.port = port = self._hv.events.bind_unbound_port(self._backend_id)
        PortReader.add(self._hv, port, self._on_port)
        ref = self._ref

        async def publish(txn: AsyncTransaction) -> None:
            await txn.write(f"{self.path}/{kbdif.FIELD_RING_GREF}", str(ref))
            await txn.write(f"{self.path}/{kbdif.FIELD_EVT_CHANNEL}", str(port))
            await txn.write(
                f"{self.path}/{kbdif.FIELD_REQ_ABS_POINTER}", str(int(self.abs_pointer))
            )
            await txn.write(
                f"{self.path}/{kbdif.FIELD_REQ_RAW_POINTER}", str(int(self.raw_pointer))
            )
            await txn.write(f"{self.path}/{kbdif.FIELD_REQ_MTOUCH}", str(int(self.multi_touch)))
            await txn.write(f"{self.path}/{xenbus.FIELD_STATE}", XenbusState.INITIALISED.encode())

        await self._xs.transact(publish)
        self._set_phase(_Phase.PUBLISHED)

    def _disconnect(self) -> None:
        """Unbind the channel and end the grant (the page stays, for the next connection)."""
        if self.port is not None:
            PortReader.unbind(self._hv, self.port)
            self.port = None
        if self._ref is not None:
            with contextlib.suppress(HypervisorError):
                self._hv.grants.end_access([self._ref])
            self._ref = None

    def _set_phase(self, phase: _Phase) -> None:
        self._phase = phase
        self._phase_changed.set()

    # -- XenStore and event channel -----------------------------------------------------

    async def _backend_state(self) -> XenbusState | None:
        text = await self._read(f"{self.backend_path}/{xenbus.FIELD_STATE}")
        if not text:
            return None
        try:
            return xenbus.parse_state(text)
        except ProtocolError:
            return XenbusState.UNKNOWN

    async def _wait_backend(self, states: set[XenbusState | None]) -> None:
        path = f"{self.backend_path}/{xenbus.FIELD_STATE}"
        async with await self._xs.watch(path) as watch:
            async for _ in watch:
                if await self._backend_state() in states:
                    return

    async def _read(self, path: str) -> str:
        try:
            return (await self._xs.read(path)).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    async def _number(self, path: str) -> int:
        text = await self._read(path)
        return int(text) if text.isdigit() and len(text) < 10 else 0

    async def _write_state(self, state: XenbusState) -> None:
        await self._xs.write(f"{self.path}/{xenbus.FIELD_STATE}", state.encode())

    def _on_port(self, port: int) -> None:
        if self._hv.events.status(port).state is PortState.UNBOUND:
            # The backend is gone or disconnected us. What follows is decided by its state
            # node alone: Closing means it closed the device, InitWait that it restarted.
            PortReader.remove(self._hv, port)
        self._ready.set()

    def _fail(self, error: InputLostError) -> None:
        if self._lost is None:
            self._lost = error
        self._ready.set()
        self._phase_changed.set()
