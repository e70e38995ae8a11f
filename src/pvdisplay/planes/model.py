"""What each connector shows now: plane descriptions and the in-process registry. No I/O.

The display backend publishes one `Plane` per connected connector: the framebuffer on
screen (cookie, format, geometry), a frame counter, and a zero-copy `BufferHandle` of the
pages holding it. Outputs read only this: in-process through `PlaneRegistry` (`get`,
`planes`, `subscribe`), from other local processes through the planes socket
(`pvdisplay.planes.server`, `pvdisplay.planes.client`, `pvdisplay.planes.aio`).
"""

import dataclasses
import errno
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from pvdisplay import logs
from pvdisplay.ipc.interfaces import BufferHandle
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)


class PlaneKey(NamedTuple):
    """A connector: frontend domain, vdispl device id, connector index.

    A tuple, so hashing it (every page flip stores a plane under its key) runs no Python.
    """

    domid: int
    devid: int
    connector: int


_JSON_TYPES: dict[object, type | tuple[type, ...]] = {str: str, int: int, float: (int, float)}


@dataclass(frozen=True)
class PlaneInfo:
    """One connector's plane as outputs see it.

    `fb_cookie` 0 means nothing is shown (connected, or reset by SET_CONFIG).
    The picture is `height` rows of `stride` bytes starting `offset` bytes into the
    buffer `buffer_id`, in `fourcc` (DRM code text, e.g. "XR24"), placed at (`x`, `y`)
    on a `mode_width`x`mode_height` display. `frame` counts presented page flips since
    the connector connected; `presented_at` is the `time.time()` of the last change.
    `bytes_copied` is what the backend copied to present the current frame: 0 in
    zero-copy mode.
    """

    domid: int
    devid: int
    connector: int
    unique_id: str
    mode_width: int
    mode_height: int
    fb_cookie: int = 0
    fourcc: str = ""
    width: int = 0
    height: int = 0
    stride: int = 0
    offset: int = 0
    x: int = 0
    y: int = 0
    buffer_id: str = ""
    frame: int = 0
    presented_at: float = 0.0
    bytes_copied: int = 0

    @functools.cached_property
    def key(self) -> PlaneKey:
        # Cached, and carried along by `next_frame`, so a presented plane's readers build
        # no key.
        return PlaneKey(self.domid, self.devid, self.connector)

    def next_frame(self, frame: int, presented_at: float) -> "PlaneInfo":
        """This plane with a new `frame` and `presented_at`: what readers of a plane shown
        by `PlaneRegistry.present` get.

        Equal to `dataclasses.replace(self, frame=frame, presented_at=presented_at)`, at
        a fraction of its cost: the other fields are taken over as they are.
        """
        plane = object.__new__(type(self))
        plane.__dict__.update(self.__dict__, frame=frame, presented_at=presented_at)
        return plane

    @property
    def shown_size(self) -> tuple[int, int]:
        """What a person sees of the connector: the picture the guest set (SET_CONFIG is
        its mode change), or the connector's resolution while it shows nothing."""
        if self.fb_cookie and self.width > 0 and self.height > 0:
            return self.width, self.height
        return self.mode_width, self.mode_height

    @property
    def frame_bytes(self) -> int:
        """Bytes from `offset` to the end of the last row (0 when nothing is shown)."""
        return self.stride * self.height

    def to_json(self) -> dict[str, object]:
        # Every field is a scalar, so a shallow dict is what asdict's deep copy would give.
        return {name: getattr(self, name) for name in _PLANE_FIELDS}

    @classmethod
    def from_json(cls, body: object) -> "PlaneInfo":
        if not isinstance(body, dict):
            raise ProtocolError(errno.EINVAL, "plane is not an object")
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            value = body.get(field.name)
            expected = _JSON_TYPES[field.type]
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ProtocolError(errno.EINVAL, f"plane field {field.name}: {value!r}")
            values[field.name] = value
        return cls(**values)  # type: ignore[arg-type]


_PLANE_FIELDS = tuple(field.name for field in dataclasses.fields(PlaneInfo))


class Plane(NamedTuple):
    """A plane and the handle of the buffer it shows (None while nothing is shown)."""

    info: PlaneInfo
    handle: BufferHandle | None


Listener = Callable[[PlaneInfo, bool], None]
"""Called with (plane, removed) after every change, on the publishing thread."""


class PlaneRegistry:
    """The current plane of every connector, with change notification. No I/O.

    Each connector's plane is kept as a description and the frame shown of it, so that
    a page flip to a framebuffer already described (`present`) builds no `PlaneInfo`;
    readers get the two combined.
    """

    def __init__(self) -> None:
        self._planes: dict[PlaneKey, _Shown] = {}
        self._listeners: list[Listener] = []
        self.handles_lock = threading.Lock()
        """Held while a handle from the registry is used on another thread than its
        publisher's: a publisher closes a handle only while holding it, a reader holds it
        from `get` until it is done with the handle."""
        self._frames_locks: weakref.WeakValueDictionary[PlaneKey, threading.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._frames_locks_made = threading.Lock()

    def frames_lock(self, key: PlaneKey) -> threading.Lock:
        """Held by a publisher while it changes the picture connector `key` shows, and by
        a reader while it copies one frame of it out. A guest learns that its flip is
        done, and may redraw the buffer it flipped away from, only after the publisher
        lets go: what a reader copies under the lock is one frame. One per connector, so
        a copy delays only its own connector's flips. Take it before `handles_lock`, and
        keep it while in use: the registry keeps it only while someone holds a reference."""
        with self._frames_locks_made:
            lock = self._frames_locks.get(key)
            if lock is None:
                lock = self._frames_locks[key] = threading.Lock()
            return lock

    def publish(self, info: PlaneInfo, handle: BufferHandle | None) -> None:
        """Make `info` the connector's plane; `handle` must stay open until replaced."""
        self._planes[info.key] = _Shown(Plane(info, handle), info.frame, info.presented_at)
        if self._listeners:
            self._notify(info, removed=False)

    def present(self, key: PlaneKey, plane: Plane, frame: int, presented_at: float) -> None:
        """Make `plane` the plane of connector `key`, as frame `frame` shown at `presented_at`.

        A page flip: `plane` describes the framebuffer (kept by the caller from one flip to
        the next), and the frame and time given replace its own.
        """
        self._planes[key] = _Shown(plane, frame, presented_at)
        if self._listeners:
            self._notify(plane.info.next_frame(frame, presented_at), removed=False)

    def remove(self, key: PlaneKey) -> None:
        shown = self._planes.pop(key, None)
        if shown is not None:
            self._notify(shown.plane().info, removed=True)

    def get(self, key: PlaneKey) -> Plane | None:
        shown = self._planes.get(key)
        return None if shown is None else shown.plane()

    def planes(self) -> list[Plane]:
        # A copy first: copying allocates no object per item, so nothing can run
        # (a finalizer, another thread) while the dict is being read.
        return [shown.plane() for _, shown in sorted(self._planes.copy().items())]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after each change; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, info: PlaneInfo, removed: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(info, removed)
            except Exception:
                log.exception("plane listener failed", extra=logs.fields(plane=info.key))


class _Shown(NamedTuple):
    described: Plane
    frame: int
    presented_at: float

    def plane(self) -> Plane:
        info = self.described.info
        if info.frame == self.frame and info.presented_at == self.presented_at:
            return self.described
        return Plane(info.next_frame(self.frame, self.presented_at), self.described.handle)


def find_plane(planes: Iterable[PlaneInfo], domid: int, devid: int, connector: str) -> PlaneInfo:
    """The plane of connector `connector` (index or unique-id); LookupError names the
    connectors there are, in the same words whichever way the connector was named."""
    candidates = [p for p in planes if p.domid == domid and p.devid == devid]
    for plane in candidates:
        if connector in (str(plane.connector), plane.unique_id):
            return plane
    choices = ", ".join(f"{p.connector} ({p.unique_id})" for p in candidates) or "none"
    raise LookupError(
        f"domain {domid} device {devid} has no connector {connector!r}; has {choices}"
    )
