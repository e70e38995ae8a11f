"""The web viewer's view of the planes socket, for an asyncio server.

Watches every plane (reconnecting when the backend goes away and comes back), keeps
per-connector rates, caches one mapped buffer handle per display buffer (a guest that
double-buffers costs two `get` calls, ever), and keeps each connector's `Mirror` up to
date from the guest's pages (compared in place on a worker thread, only changed tiles
copied), shared by every viewer of the connector.
"""

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from pvdisplay import logs
from pvdisplay.ipc import framing
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.memory import SharedMapping
from pvdisplay.outputs.web.tiles import Mirror, Snapshot
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.input_events import InputEvent
from pvdisplay.planes.model import PlaneInfo, PlaneKey
from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)

RECONNECT_DELAY: Final = 0.5
RATE_WINDOW: Final = 1.0
# Buffers mapped per connector: double or triple buffering reuses them; older ones go.
MAPPED_PER_CONNECTOR: Final = 3


@dataclass
class PlaneRate:
    """Frames per second and flip latency of one connector, from the changes seen."""

    flips: deque[tuple[float, int]] = field(default_factory=deque)
    latency: float = 0.0

    def update(self, info: PlaneInfo, now: float, wall: float) -> None:
        self.flips.append((now, info.frame))
        while self.flips and now - self.flips[0][0] > RATE_WINDOW:
            self.flips.popleft()
        self.latency = max(wall - info.presented_at, 0.0)

    def fps(self, now: float) -> float:
        if len(self.flips) < 2 or now - self.flips[-1][0] > RATE_WINDOW:
            return 0.0
        (first, frame0), (last, frame1) = self.flips[0], self.flips[-1]
        return (frame1 - frame0) / (last - first) if last > first else 0.0


@dataclass(frozen=True)
class Capture:
    """The connector's mirror once it holds one presented frame."""

    info: PlaneInfo
    snapshot: Snapshot


@dataclass
class _Mapped:
    """A mapped buffer; closed once retired and no worker reads it any more."""

    handle: SharedBuffer
    mapping: SharedMapping
    readers: int = 0
    retired: bool = False

    def retire(self) -> None:
        self.retired = True
        if self.readers == 0:
            self.mapping.close()
            self.handle.close()

    def release(self) -> None:
        self.readers -= 1
        if self.retired:
            self.retire()


class PlaneFeed:
    """Planes from the backend's socket, for one asyncio loop; `start`, then `close`."""

    def __init__(self, planes_socket: str | Path) -> None:
        self.planes_socket = Path(planes_socket)
        self.planes: dict[PlaneKey, PlaneInfo] = {}
        self.rates: dict[PlaneKey, PlaneRate] = {}
        self.connected = False
        self._listeners: list[Callable[[PlaneKey | None], None]] = []
        self._mapped: dict[PlaneKey, dict[str, _Mapped]] = {}
        self._captures: dict[PlaneKey, asyncio.Task[Capture | None]] = {}
        self._mirrors: dict[PlaneKey, Mirror] = {}
        self._query: PlaneClient | None = None
        self._query_lock = asyncio.Lock()
        self._input: PlaneClient | None = None
        self._input_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*self._captures.values(), return_exceptions=True)
        self._forget_all()

    def subscribe(self, listener: Callable[[PlaneKey | None], None]) -> Callable[[], None]:
        """Call `listener(key)` after a connector changes, `listener(None)` after the
        backend connection comes or goes; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def capture(self, key: PlaneKey) -> Capture | None:
        """The connector's current picture, or None while it shows nothing."""
        info = self.planes.get(key)
        if info is None or not info.fb_cookie:
            return None
        task = self._captures.get(key)
        if task is not None and task.done() and not task.cancelled():
            captured = task.result()
            if captured is None or captured.info != info:
                task = None
        if task is None:
            task = asyncio.get_running_loop().create_task(self._capture(key))
            self._captures[key] = task
        return await asyncio.shield(task)

    async def send_input(self, key: PlaneKey, events: Sequence[InputEvent]) -> None:
        """Forward events to the guest; lost (and logged) when nothing is bound to take them."""
        async with self._input_lock:
            try:
                if self._input is None:
                    self._input = await asyncio.to_thread(PlaneClient, self.planes_socket)
                await asyncio.to_thread(self._input.send_input, key, events)
            except (ConnectionError, EOFError, ProtocolError) as error:
                log.info("input connection lost", extra=logs.fields(plane=key, reason=error))
                self._close_input()
            except OSError as error:  # no vkb bound to this connector, or refused events
                log.info("input not delivered", extra=logs.fields(plane=key, reason=error))

    # -- capture ---------------------------------------------------------------------

    async def _capture(self, key: PlaneKey) -> Capture | None:
        entry = self._mapped_entry(key)
        if entry is None:
            await self._fetch(key)
            entry = self._mapped_entry(key)
        if entry is None:
            return None
        info, mapped = entry
        try:
            fmt = fourcc.by_fourcc(fourcc.fourcc_code(info.fourcc))
        except (ProtocolError, ValueError) as error:
            log.warning("plane format unknown", extra=logs.fields(plane=key, reason=error))
            return None
        if info.width <= 0 or info.height <= 0 or info.stride < fmt.min_pitch(info.width):
            return None
        if info.offset + info.frame_bytes > mapped.mapping.length:
            return None  # the backend checked this; a torn-down buffer is not worth a crash
        mirror = self._mirrors.get(key)
        if mirror is None or mirror.geometry != (fmt.fourcc, info.width, info.height, info.stride):
            mirror = self._mirrors[key] = Mirror(fmt, info.width, info.height, info.stride)
        # The worker reads the guest's pages in place; the mapping stays open until it is
        # done (mappings are retired here, in the loop, and closed when no reader is left).
        mapped.readers += 1
        try:
            await asyncio.to_thread(_update, mirror, mapped.mapping, info)
        finally:
            mapped.release()
        return Capture(info, mirror.snapshot())

    def _mapped_entry(self, key: PlaneKey) -> tuple[PlaneInfo, _Mapped] | None:
        info = self.planes.get(key)
        if info is None or not info.fb_cookie:
            return None
        mapped = self._mapped.get(key, {}).get(info.buffer_id)
        return None if mapped is None else (info, mapped)

    async def _fetch(self, key: PlaneKey) -> None:
        """Ask for the plane's buffer handle, map it and keep it for later frames."""
        async with self._query_lock:
            try:
                if self._query is None:
                    self._query = await asyncio.to_thread(PlaneClient, self.planes_socket)
                current, handle = await asyncio.to_thread(
                    self._query.get, key.domid, key.connector, key.devid
                )
            except (ConnectionError, EOFError, ProtocolError) as error:
                log.debug("planes query lost", extra=logs.fields(plane=key, reason=error))
                self._close_query()
                return
            except OSError as error:  # ENOENT: removed meanwhile
                log.debug("plane get failed", extra=logs.fields(plane=key, reason=error))
                return
        if handle is None:
            return
        if key not in self.planes:  # removed while we asked
            handle.close()
            return
        mapped = self._mapped.setdefault(key, {})
        mapped[handle.id] = _Mapped(handle, handle.map())
        while len(mapped) > MAPPED_PER_CONNECTOR:
            mapped.pop(next(iter(mapped))).retire()
        if current.frame >= self.planes[key].frame:
            self.planes[key] = current  # its watch event is on the way; use its buffer now

    # -- watching ----------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        while True:
            try:
                await self._watch()
            except (OSError, EOFError, ProtocolError) as error:
                log.debug("planes socket unavailable", extra=logs.fields(reason=error))
            if self.connected:
                log.info("backend gone", extra=logs.fields(path=self.planes_socket))
            self.connected = False
            self._forget_all()
            self._notify(None)
            await asyncio.sleep(RECONNECT_DELAY)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(self.planes_socket))
            for record, _ in framing.encode({"op": "watch"}):
                await loop.sock_sendall(sock, record)
            assembler = framing.Assembler()
            await self._receive(sock, assembler)  # {"watching": true}: changes from here on
            with PlaneClient(self.planes_socket) as client:
                current = await asyncio.to_thread(client.list)
            self.connected = True
            log.info("backend connected", extra=logs.fields(path=self.planes_socket))
            for info in current:
                self._update(info)
            self._notify(None)
            while True:
                body = await self._receive(sock, assembler)
                info = PlaneInfo.from_json(body.get("plane"))
                if body.get("event") == "removed":
                    self._remove(info.key)
                else:
                    self._update(info)

    @staticmethod
    async def _receive(sock: socket.socket, assembler: framing.Assembler) -> framing.JsonObject:
        loop = asyncio.get_running_loop()
        while True:
            record = await loop.sock_recv(sock, framing.RECV_BYTES)
            if not record:
                raise EOFError("planes socket closed")
            message = assembler.feed(record, [])
            if message is not None:
                return message.body

    def _update(self, info: PlaneInfo) -> None:
        known = self.planes.get(info.key)
        if known is not None and info.frame < known.frame and info.fb_cookie == known.fb_cookie:
            return  # an older answer than a change we already have
        self.planes[info.key] = info
        self.rates.setdefault(info.key, PlaneRate()).update(info, time.monotonic(), time.time())
        self._notify(info.key)

    def _remove(self, key: PlaneKey) -> None:
        self.planes.pop(key, None)
        self.rates.pop(key, None)
        self._captures.pop(key, None)
        self._mirrors.pop(key, None)
        for entry in self._mapped.pop(key, {}).values():
            entry.retire()
        self._notify(key)

    def _forget_all(self) -> None:
        for key in list(self.planes):
            self._remove(key)
        for entries in self._mapped.values():
            for entry in entries.values():
                entry.retire()
        self._mapped.clear()
        self._close_query()
        self._close_input()

    def _close_input(self) -> None:
        if self._input is not None:
            self._input.close()
            self._input = None

    def _close_query(self) -> None:
        if self._query is not None:
            self._query.close()
            self._query = None

    def _notify(self, key: PlaneKey | None) -> None:
        for listener in list(self._listeners):
            listener(key)


def _update(mirror: Mirror, mapping: SharedMapping, info: PlaneInfo) -> None:
    pixels = np.asarray(mapping.array(), dtype=np.uint8)
    try:
        mirror.update(pixels[info.offset : info.offset + info.frame_bytes])
    finally:
        del pixels  # no view may outlive the read: the mapping closes once retired
