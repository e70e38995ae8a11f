"""The PV input frontend (the Linux xen-kbdfront role) as an asyncio API for guest programs.

    async with await Keyboard.open(hv, xenstore_socket, devid=0) as keyboard:
        async for event in keyboard:      # kbdif.Key, Motion, Position, MtDown, ... MtOrient
            ...

Events stay on the shared ring until the program reads them, so a program that stops
reading makes the backend drop (and count) the oldest input instead of the guest
buffering without bound. Reading advances `in_cons` and notifies the backend, which then
refills the ring. In-events of unknown type are skipped, as kbdif.h asks.

Handshake (xen-kbdfront's): wait for the backend's InitWait, read its features and sizes
(`feature-abs-pointer`, `feature-multi-touch`, `width`, `height`, `multi-touch-*`,
`unique-id`), grant a zeroed page, bind an event channel, write `page-gref`,
`event-channel`, `request-abs-pointer` and `request-multi-touch` with state Initialised
in one transaction, then Connected once the backend is.
"""

import asyncio
import contextlib
import errno
from types import TracebackType
from typing import Self

from pvdisplay import xenbus
from pvdisplay.display.front import _PortReader
from pvdisplay.hv import Hypervisor, HypervisorError, PortState
from pvdisplay.store.aio import AsyncClient, AsyncTransaction
from pvdisplay.wire import kbdif
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.xenbus import XenbusState

KIND = kbdif.DRIVER_NAME
CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 3.0
_U32 = 0xFFFFFFFF


class InputLostError(ConnectionError):
    """The backend went away or broke the ring protocol."""


class Keyboard:
    """One vkbd device of this guest, from `Keyboard.open` until `close()`."""

    def __init__(self, hv: Hypervisor, xs: AsyncClient, devid: int, backend_path: str) -> None:
        self._hv = hv
        self._xs = xs
        self.devid = devid
        self.path = xenbus.frontend_path(hv.domid, KIND, devid)
        self.backend_path = backend_path
        self.unique_id = ""
        self.width = self.height = 0
        self.abs_pointer = self.multi_touch = False
        self.mt_width = self.mt_height = self.mt_contacts = 0
        self.skipped = 0
        """In-events of a type this frontend does not know, skipped."""
        self._backend_id = 0
        self._memory = hv.grants.alloc(1)
        self.page = self._memory.view()
        """The shared page itself (the ring indexes and slots), for diagnostics and tests."""
        self.port: int | None = None
        self._ready = asyncio.Event()
        self._lost: InputLostError | None = None

    @classmethod
    async def open(
        cls,
        hv: Hypervisor,
        xenstore_socket: str,
        devid: int = 0,
        absolute: bool = True,
        multi_touch: bool = True,
    ) -> "Keyboard":
        """Connect; ask for absolute pointer and multi-touch if wanted and offered."""
        xs = await AsyncClient.connect(xenstore_socket)
        keyboard: Keyboard | None = None
        try:
            front = xenbus.frontend_path(hv.domid, KIND, devid)
            backend_path = (await xs.read(f"{front}/{xenbus.FIELD_BACKEND}")).decode()
            keyboard = cls(hv, xs, devid, backend_path)
            await asyncio.wait_for(keyboard._connect(absolute, multi_touch), CONNECT_TIMEOUT)
        except BaseException:
            if keyboard is not None:
                await keyboard.close()
            else:
                await xs.close()
            raise
        return keyboard

    async def read(self) -> list[kbdif.InEvent]:
        """Every event waiting on the ring (at least one: waits for it)."""
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
        page = self.page
        in_prod = kbdif.read_index(page, kbdif.IN_PROD_OFFSET)
        in_cons = kbdif.read_index(page, kbdif.IN_CONS_OFFSET)
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
        if in_cons != kbdif.read_index(page, kbdif.IN_CONS_OFFSET):
            kbdif.write_index(page, kbdif.IN_CONS_OFFSET, in_cons)
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
        with contextlib.suppress(FileNotFoundError, ConnectionError, OSError):
            await self._write_state(XenbusState.CLOSING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wait_backend({XenbusState.CLOSING, XenbusState.CLOSED, None}),
                    CLOSE_TIMEOUT,
                )
            await self._write_state(XenbusState.CLOSED)
        if self.port is not None:
            _PortReader.remove(self._hv, self.port)
            with contextlib.suppress(HypervisorError):
                self._hv.events.unbind(self.port)
            self.port = None
        self.page.release()
        with contextlib.suppress(HypervisorError):
            self._memory.close()
        await self._xs.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- handshake ----------------------------------------------------------------------

    async def _connect(self, absolute: bool, multi_touch: bool) -> None:
        back = self.backend_path
        self._backend_id = int(await self._xs.read(f"{self.path}/{xenbus.FIELD_BACKEND_ID}"))
        await self._wait_backend({XenbusState.INIT_WAIT, XenbusState.CONNECTED})
        self.unique_id = await self._read(f"{back}/{kbdif.FIELD_UNIQUE_ID}")
        self.width = await self._number(f"{back}/{kbdif.FIELD_WIDTH}")
        self.height = await self._number(f"{back}/{kbdif.FIELD_HEIGHT}")
        self.abs_pointer = (
            absolute and await self._read(f"{back}/{kbdif.FIELD_FEAT_ABS_POINTER}") == "1"
        )
        self.multi_touch = (
            multi_touch and await self._read(f"{back}/{kbdif.FIELD_FEAT_MTOUCH}") == "1"
        )
        if self.multi_touch:
            self.mt_width = await self._number(f"{back}/{kbdif.FIELD_MT_WIDTH}")
            self.mt_height = await self._number(f"{back}/{kbdif.FIELD_MT_HEIGHT}")
            self.mt_contacts = await self._number(f"{back}/{kbdif.FIELD_MT_NUM_CONTACTS}")
        self.page[:] = bytes(len(self.page))
        (ref,) = self._hv.grants.grant(self._backend_id, self._memory, [0])
        self.port = self._hv.events.bind_unbound_port(self._backend_id)
        _PortReader.add(self._hv, self.port, self._on_port)
        port = self.port

        async def publish(txn: AsyncTransaction) -> None:
            await txn.write(f"{self.path}/{kbdif.FIELD_RING_GREF}", str(ref))
            await txn.write(f"{self.path}/{kbdif.FIELD_EVT_CHANNEL}", str(port))
            await txn.write(
                f"{self.path}/{kbdif.FIELD_REQ_ABS_POINTER}", str(int(self.abs_pointer))
            )
            await txn.write(f"{self.path}/{kbdif.FIELD_REQ_MTOUCH}", str(int(self.multi_touch)))
            await txn.write(f"{self.path}/{xenbus.FIELD_STATE}", XenbusState.INITIALISED.encode())

        await self._xs.transact(publish)
        await self._wait_backend({XenbusState.CONNECTED})
        await self._write_state(XenbusState.CONNECTED)

    async def _wait_backend(self, states: set[XenbusState | None]) -> None:
        path = f"{self.backend_path}/{xenbus.FIELD_STATE}"
        async with await self._xs.watch(path) as watch:
            async for _ in watch:
                text = await self._read(path)
                state = xenbus.parse_state(text) if text else None
                if state in states:
                    return
                if state in (XenbusState.CLOSING, XenbusState.CLOSED):
                    raise InputLostError(errno.ENODEV, f"backend is {state.name}")

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
            self._fail(InputLostError(errno.ENOTCONN, "the backend closed the event channel"))
        self._ready.set()

    def _fail(self, error: InputLostError) -> None:
        if self._lost is None:
            self._lost = error
        self._ready.set()
