"""What each connector shows now: the plane registry, its socket server and a client.

The display backend publishes one `Plane` per connected connector: the framebuffer on
screen (cookie, format, geometry), a frame counter, and a zero-copy `BufferHandle` of the
pages holding it. Outputs read only this. In-process readers use `PlaneRegistry`
(`get`, `planes`, `subscribe`); other local processes use `PlaneServer`'s unix socket
through `PlaneClient`, which receives the buffer's descriptors by SCM_RIGHTS and maps
them without copying.

Socket protocol (SOCK_SEQPACKET, each message a JSON object framed by
`pvdisplay.ipc.sockets`):

- `{"op": "list"}` -> `{"planes": [PLANE, ...]}`
- `{"op": "get", "domid": D, "devid": V, "connector": C}` -> `{"plane": PLANE, "buffer": B}`;
  when `B` is true, the buffer handle follows as the next message
  (`SharedBuffer.send`).
- `{"op": "watch"}` -> `{"watching": true}`, then `{"event": "changed", "plane": PLANE}` or
  `{"event": "removed", "plane": PLANE}` for every change, in order.
- `{"op": "input", "domid": D, "devid": V, "connector": C, "events": [EVENT, ...]}` ->
  `{"queued": N, "dropped": M}`: hands `pvdisplay.input.events` (at most `MAX_INPUT_EVENTS`)
  to the backend's input handler, which routes them to the vkbd bound to the connector
  (docs/input.md). ENOENT when none is, EINVAL for a bad event.
- anything else -> `{"error": ERRNO, "message": TEXT}`.

A client that does not read its replies or events is disconnected rather than allowed
to hold up the backend.
"""

import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

import numpy as np
import numpy.typing as npt

from pvdisplay import logs
from pvdisplay.hv import BufferHandle
from pvdisplay.input import events as input_events
from pvdisplay.ipc import framing
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.sockets import close_all, receive_message, send_message
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


MAX_INPUT_EVENTS = 256


@dataclass(frozen=True)
class InputReceipt:
    """The backend's answer to an "input" op.

    `queued`: kbdif events the call produced (on the guest's ring or waiting for room);
    `dropped`: events this vkbd device has dropped since it connected because its guest
    did not consume them in time (pointer motion first, never a release: docs/input.md).
    """

    queued: int
    dropped: int


InputHandler = Callable[[PlaneKey, Sequence[input_events.InputEvent]], InputReceipt]
"""Routes events to the connector's input device; raises ProtocolError (ENOENT) if none."""


class PlaneServer:
    """Serves a `PlaneRegistry` on a SOCK_SEQPACKET unix socket from an asyncio loop.

    The registry may be published to from any thread.
    """

    def __init__(
        self,
        registry: PlaneRegistry,
        path: str | os.PathLike[str],
        input_handler: InputHandler | None = None,
    ) -> None:
        self._registry = registry
        self._input_handler = input_handler
        self._path = Path(path)
        self._listener: socket.socket | None = None
        self._clients: dict[int, socket.socket] = {}
        self._watchers: set[int] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def path(self) -> Path:
        return self._path

    def start(self) -> None:
        """Listen (replacing a stale socket file) and serve from the running loop."""
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            if self._path.is_socket():
                self._path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            listener.bind(str(self._path))
            os.chmod(self._path, 0o600)
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)
        log.info("planes socket listening", extra=logs.fields(path=self._path))

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        if self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    def _accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(False)
        fd = client.fileno()
        self._clients[fd] = client
        self._loop.add_reader(fd, self._serve, fd)

    def _serve(self, fd: int) -> None:
        client = self._clients.get(fd)
        if client is None:
            return
        try:
            request = receive_message(client)
            close_all(request.fds)
            self._answer(client, request.body)
            if request.body.get("op") == "watch":
                self._watch(fd)
        except BlockingIOError:
            return
        except (EOFError, OSError, ProtocolError) as exc:
            log.debug("planes client gone", extra=logs.fields(reason=exc))
            self._drop(fd)

    def _answer(self, client: socket.socket, body: framing.JsonObject) -> None:
        op = body.get("op")
        if op == "list":
            send_message(client, {"planes": [p.info.to_json() for p in self._registry.planes()]})
        elif op == "watch":
            send_message(client, {"watching": True})
        elif op == "get":
            try:
                key = PlaneKey(
                    framing.get_int(body, "domid", 0xFFFF),
                    framing.get_int(body, "devid"),
                    framing.get_int(body, "connector"),
                )
            except ProtocolError as exc:
                send_message(client, {"error": exc.errno, "message": exc.message})
                return
            # The publisher (the display backend's ring thread) may close the handle of
            # a plane it replaces at any time, but not while this holds the lock.
            with self._registry.handles_lock:
                plane = self._registry.get(key)
                if plane is None:
                    send_message(client, {"error": errno.ENOENT, "message": f"no plane {key}"})
                    return
                send_message(
                    client, {"plane": plane.info.to_json(), "buffer": plane.handle is not None}
                )
                if plane.handle is not None:
                    plane.handle.send(client)
        elif op == "input":
            try:
                receipt = self._input(body)
            except ProtocolError as exc:
                send_message(client, {"error": exc.errno, "message": exc.message})
                return
            send_message(client, {"queued": receipt.queued, "dropped": receipt.dropped})
        else:
            send_message(client, {"error": errno.EINVAL, "message": f"unknown op {op!r}"})

    def _input(self, body: framing.JsonObject) -> InputReceipt:
        key = PlaneKey(
            framing.get_int(body, "domid", 0xFFFF),
            framing.get_int(body, "devid"),
            framing.get_int(body, "connector"),
        )
        raw = body.get("events")
        if not isinstance(raw, list) or len(raw) > MAX_INPUT_EVENTS:
            raise ProtocolError(errno.EINVAL, f"events must be a list of <= {MAX_INPUT_EVENTS}")
        events = [input_events.from_json(item) for item in raw]
        if self._input_handler is None:
            raise ProtocolError(errno.ENOENT, "this backend serves no input devices")
        return self._input_handler(key, events)

    def _watch(self, fd: int) -> None:
        # Listen to the registry only while someone watches: every page flip publishes a
        # plane, and with no listener that costs the backend no call at all.
        if self._unsubscribe is None:
            self._unsubscribe = self._registry.subscribe(self._on_change)
        self._watchers.add(fd)

    def _on_change(self, info: PlaneInfo, removed: bool) -> None:
        # Publishers may run on other threads (the display backend's rings); the sockets
        # are the loop's. Through the loop's queue, watchers get changes in order.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._send_change, info, removed)

    def _send_change(self, info: PlaneInfo, removed: bool) -> None:
        event = {"event": "removed" if removed else "changed", "plane": info.to_json()}
        for fd in list(self._watchers):
            try:
                send_message(self._clients[fd], event)
            except OSError as exc:  # BlockingIOError: a watcher that does not read
                log.info("dropping planes watcher", extra=logs.fields(reason=exc))
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        client = self._clients.pop(fd, None)
        self._watchers.discard(fd)
        if not self._watchers and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if client is not None:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            client.close()


@dataclass(frozen=True)
class PlaneChange:
    plane: PlaneInfo
    removed: bool


class PlaneClient:
    """Blocking client of a `PlaneServer` socket (one request at a time)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except BaseException:
            self._sock.close()
            raise

    def list(self) -> list[PlaneInfo]:
        reply = self._call({"op": "list"})
        planes = reply.get("planes")
        if not isinstance(planes, list):
            raise ProtocolError(errno.EINVAL, "list reply without planes")
        return [PlaneInfo.from_json(p) for p in planes]

    def get(
        self, domid: int, connector: int, devid: int = 0
    ) -> tuple[PlaneInfo, SharedBuffer | None]:
        """The plane and a handle of its buffer (close it when done), or ENOENT."""
        reply = self._call({"op": "get", "domid": domid, "devid": devid, "connector": connector})
        info = PlaneInfo.from_json(reply.get("plane"))
        handle = SharedBuffer.receive(self._sock) if reply.get("buffer") is True else None
        return info, handle

    def snapshot(
        self, domid: int, connector: int, devid: int = 0
    ) -> tuple[PlaneInfo, npt.NDArray[np.uint8]]:
        """A copy of the picture on screen: `frame_bytes` bytes from the plane's offset.

        Convert with `pvdisplay.wire.fourcc.to_rgb(fmt, pixels, width, height, stride)`.
        ENOENT when the connector shows nothing.
        """
        info, handle = self.get(domid, connector, devid)
        if handle is None:
            raise FileNotFoundError(errno.ENOENT, f"connector {domid}/{devid}/{connector} is blank")
        try:
            with handle.map() as mapping:
                view = mapping.array()
                end = min(info.offset + info.frame_bytes, view.size)
                pixels = np.array(view[info.offset : end], dtype=np.uint8)
                del view
        finally:
            handle.close()
        return info, pixels

    def send_input(self, key: PlaneKey, events: Sequence[input_events.InputEvent]) -> InputReceipt:
        """Send `events` (connector pixels) to the vkbd bound to connector `key`.

        Raises OSError(ENOENT) when no connected input device is bound to it.
        """
        reply = self._call(
            {
                "op": "input",
                "domid": key.domid,
                "devid": key.devid,
                "connector": key.connector,
                "events": [input_events.to_json(event) for event in events],
            }
        )
        queued, dropped = reply.get("queued"), reply.get("dropped")
        if not isinstance(queued, int) or not isinstance(dropped, int):
            raise ProtocolError(errno.EINVAL, "input reply without queued/dropped")
        return InputReceipt(queued, dropped)

    def watch(self) -> Iterator[PlaneChange]:
        """Every change from now on (registered before returning); use a dedicated client."""
        self._call({"op": "watch"})
        self._sock.settimeout(None)
        return self._changes()

    def _changes(self) -> Iterator[PlaneChange]:
        while True:
            message = receive_message(self._sock)
            close_all(message.fds)
            yield PlaneChange(
                PlaneInfo.from_json(message.body.get("plane")),
                message.body.get("event") == "removed",
            )

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, body: framing.JsonObject) -> framing.JsonObject:
        send_message(self._sock, body)
        reply = receive_message(self._sock)
        close_all(reply.fds)
        error = reply.body.get("error")
        if isinstance(error, int):
            raise OSError(error, str(reply.body.get("message", "")))
        return reply.body
