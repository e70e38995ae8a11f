"""`PlaneFeed`: an output's one view of the display backend's planes socket.

Watches every plane (reconnecting when the backend goes away and comes back), keeps
per-connector rates, maps each display buffer once (`buffers`), keeps each connector's
mirror current from the guest's pages (compared in place on a worker thread, only changed
tiles copied; readers of one connector share each update), and forwards input. All of it
through `AsyncPlaneClient`, on one asyncio loop.
"""

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic

import numpy as np

from pvdisplay import logs
from pvdisplay.ipc.memory import SharedMapping
from pvdisplay.outputs.feed.buffers import ConnectorBuffers, MappedBuffer
from pvdisplay.outputs.feed.mirror import M, Mirror, Snapshot
from pvdisplay.outputs.feed.rates import PlaneRate
from pvdisplay.planes.aio import AsyncPlaneClient
from pvdisplay.planes.input_events import MAX_INPUT_EVENTS, InputEvent
from pvdisplay.planes.model import PlaneInfo, PlaneKey
from pvdisplay.planes.protocol import PlaneChange
from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.fourcc import PixelFormat

log = logging.getLogger(__name__)

RECONNECT_DELAY: Final = 0.5


@dataclass(frozen=True)
class Capture(Generic[M]):
    """A connector's picture once its mirror holds one presented frame: the plane it
    shows and the mirror as of that update."""

    info: PlaneInfo
    snapshot: Snapshot[M]


Listener = Callable[[PlaneKey | None], None]
"""Called with a connector after it changes, with None after the backend comes or goes."""


class PlaneFeed(Generic[M]):
    """Planes from the backend's socket, for one asyncio loop; `start`, then `close`.

    `mirror` makes a connector's mirror for a geometry (`GuestMirror`, `CanonicalMirror`).
    """

    def __init__(
        self,
        planes_socket: str | os.PathLike[str],
        mirror: Callable[[PixelFormat, int, int, int], M],
    ) -> None:
        self.planes_socket = Path(planes_socket)
        self.planes: dict[PlaneKey, PlaneInfo] = {}
        self.rates: dict[PlaneKey, PlaneRate] = {}
        self.connected = False
        self._new_mirror = mirror
        self._listeners: list[Listener] = []
        self._versions: dict[PlaneKey, int] = {}
        self._changed: dict[PlaneKey, asyncio.Event] = {}
        self._buffers: dict[PlaneKey, ConnectorBuffers] = {}
        self._captures: dict[PlaneKey, asyncio.Task[Capture[M] | None]] = {}
        self._mirrors: dict[PlaneKey, M] = {}
        self._watcher: AsyncPlaneClient | None = None
        self._query: AsyncPlaneClient | None = None
        self._input: AsyncPlaneClient | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow the backend from now on, whether or not it is there yet."""
        self._task = asyncio.get_running_loop().create_task(self._watch_forever(None))

    async def connect(self) -> None:
        """Connect to the backend now (OSError when it is not there), then follow it."""
        # The caller asked and will report: only a reconnection later is news.
        changes = await self._open(logging.DEBUG)
        self._task = asyncio.get_running_loop().create_task(self._watch_forever(changes))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*self._captures.values(), return_exceptions=True)
        self._forget_all()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after every change; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def version(self, key: PlaneKey) -> int:
        """Counts changes of the connector; unchanged means the same picture."""
        return self._versions.get(key, 0)

    async def wait_change(self, key: PlaneKey, version: int) -> None:
        """Return once the connector's version differs from `version`."""
        event = self._changed.setdefault(key, asyncio.Event())
        while self.version(key) == version:
            event.clear()
            await event.wait()

    async def capture(self, key: PlaneKey) -> Capture[M] | None:
        """The connector's current picture, or None while it shows nothing (or nothing
        that can be read)."""
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
        """Forward events to the guest (as many requests as the socket's limit takes);
        lost, and logged, when nothing is bound to take them, as on hardware."""
        for start in range(0, len(events), MAX_INPUT_EVENTS):
            try:
                if self._input is None:
                    self._input = await AsyncPlaneClient.connect(self.planes_socket)
                await self._input.send_input(key, events[start : start + MAX_INPUT_EVENTS])
            except (ConnectionError, EOFError, ProtocolError) as error:
                log.info("input connection lost", extra=logs.fields(plane=key, reason=error))
                self._close_input()
                return
            except OSError as error:  # no vkbd bound to this connector, or refused events
                level = logging.DEBUG if error.errno == errno.ENOENT else logging.INFO
                log.log(level, "input not delivered", extra=logs.fields(plane=key, reason=error))
                return

    # -- capture ---------------------------------------------------------------------

    async def _capture(self, key: PlaneKey) -> Capture[M] | None:
        entry = self._mapped(key)
        if entry is None:
            await self._fetch(key)
            entry = self._mapped(key)
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
        geometry = (fmt.fourcc, info.width, info.height, info.stride)
        mirror = self._mirrors.get(key)
        if mirror is None or mirror.geometry != geometry:
            mirror = self._mirrors[key] = self._new_mirror(fmt, *geometry[1:])
        # The worker reads the guest's pages in place; the mapping stays open until it is
        # done (buffers are retired here, in the loop, and closed when no reader is left).
        mapping = mapped.acquire()
        try:
            await asyncio.to_thread(_update, mirror, mapping, info)
        finally:
            mapped.release()
        return Capture(info, mirror.snapshot())

    def _mapped(self, key: PlaneKey) -> tuple[PlaneInfo, MappedBuffer] | None:
        info = self.planes.get(key)
        buffers = self._buffers.get(key)
        if info is None or not info.fb_cookie or buffers is None:
            return None
        mapped = buffers.get(info.buffer_id)
        return None if mapped is None else (info, mapped)

    async def _fetch(self, key: PlaneKey) -> None:
        """Ask for the plane's buffer handle, map it and keep it for later frames."""
        try:
            if self._query is None:
                self._query = await AsyncPlaneClient.connect(self.planes_socket)
            current, handle = await self._query.get(key)
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
        self._buffers.setdefault(key, ConnectorBuffers()).add(handle)
        if current.frame >= self.planes[key].frame:
            self.planes[key] = current  # its watch event is on the way; use its buffer now

    # -- watching ----------------------------------------------------------------------

    async def _watch_forever(self, changes: AsyncIterator[PlaneChange] | None) -> None:
        while True:
            try:
                async for change in changes or await self._open(logging.INFO):
                    if change.removed:
                        self._remove(change.plane.key)
                    else:
                        self._update(change.plane)
            except (OSError, EOFError, ProtocolError) as error:
                log.debug("planes socket unavailable", extra=logs.fields(reason=error))
            changes = None
            if self.connected:
                log.info("backend gone", extra=logs.fields(path=self.planes_socket))
            self.connected = False
            self._forget_all()
            self._notify(None)
            await asyncio.sleep(RECONNECT_DELAY)

    async def _open(self, level: int) -> AsyncIterator[PlaneChange]:
        """Watch, then take the planes as they are: no change is missed between the two."""
        self._watcher = await AsyncPlaneClient.connect(self.planes_socket)
        try:
            changes = await self._watcher.watch()
            if self._query is None:
                self._query = await AsyncPlaneClient.connect(self.planes_socket)
            current = await self._query.list()
        except BaseException:
            self._close_clients()
            raise
        self.connected = True
        log.log(level, "backend connected", extra=logs.fields(path=self.planes_socket))
        for info in current:
            self._update(info)
        self._notify(None)
        return changes

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
        buffers = self._buffers.pop(key, None)
        if buffers is not None:
            buffers.retire_all()
        self._notify(key)

    def _forget_all(self) -> None:
        for key in list(self.planes):
            self._remove(key)
        for buffers in self._buffers.values():
            buffers.retire_all()
        self._buffers.clear()
        self._close_clients()

    def _close_clients(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
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
        if key is not None:
            self._versions[key] = self._versions.get(key, 0) + 1
            event = self._changed.get(key)
            if event is not None:
                event.set()
        for listener in list(self._listeners):
            listener(key)


def _update(mirror: Mirror, mapping: SharedMapping, info: PlaneInfo) -> None:
    pixels = np.asarray(mapping.array(), dtype=np.uint8)
    try:
        mirror.update(pixels[info.offset : info.offset + info.frame_bytes])
    finally:
        del pixels  # no view may outlive the read: the mapping closes once retired
