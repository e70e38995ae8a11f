"""The planes socket: a `PlaneRegistry` served to other local processes.

The display backend publishes one `Plane` per connected connector: the framebuffer on
screen (cookie, format, geometry), a frame counter, and a zero-copy `BufferHandle` of the
pages holding it. Outputs read only this. In-process readers use `PlaneRegistry`
(`get`, `planes`, `subscribe`); other local processes use `PlaneServer`'s unix socket
through `PlaneClient` or `AsyncPlaneClient`, which receive the buffer's descriptors by
SCM_RIGHTS and map them without copying.

The messages are in `pvdisplay.planes.protocol`.

A client that does not read its replies or events is disconnected rather than allowed
to hold up the backend, and at most `max_clients` are served at once: the socket lives in
the backend's process, whose descriptors its guests need.
"""

import asyncio
import contextlib
import errno
import logging
import mmap
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pvdisplay import logs
from pvdisplay.ipc import framing
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.framing import Assembler
from pvdisplay.ipc.sockets import close_all, receive_message, send_message
from pvdisplay.planes import input_events, protocol
from pvdisplay.planes.input_events import InputReceipt
from pvdisplay.planes.model import PlaneInfo, PlaneKey, PlaneRegistry
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)
client_log = logs.PeerLog(log)
"""Lines local clients can make us write, limited (clients have no identity: one key)."""

MAX_CLIENTS = 64
"""Clients served at once by default; each output takes one or two."""

ACCEPT_RETRY = 0.1
"""Seconds before accepting again when the process has no descriptor for a client."""

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
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self._registry = registry
        self._max_clients = max_clients
        self._input_handler = input_handler
        self._path = Path(path)
        self._listener: socket.socket | None = None
        self._clients: dict[int, socket.socket] = {}
        self._watchers: set[int] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scratch = np.zeros(0, np.uint8)

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
        except OSError as exc:
            # EMFILE/ENFILE: the connection stays queued and the listener readable, so
            # step back instead of spinning, and try again shortly.
            client_log.warning("local", "cannot accept a planes client", reason=exc)
            self._loop.remove_reader(self._listener.fileno())
            self._loop.call_later(ACCEPT_RETRY, self._accept_again)
            return
        if len(self._clients) >= self._max_clients:
            client_log.warning("local", "planes client refused", clients=len(self._clients))
            client.close()
            return
        client.setblocking(False)
        fd = client.fileno()
        self._clients[fd] = client
        self._loop.add_reader(fd, self._serve, fd)

    def _accept_again(self) -> None:
        if self._listener is not None and self._loop is not None:
            self._loop.add_reader(self._listener.fileno(), self._accept)

    def _serve(self, fd: int) -> None:
        client = self._clients.get(fd)
        if client is None:
            return
        try:
            # Requests carry no descriptors: none are held for a client while it sends.
            request = receive_message(client, Assembler(max_fds=0))
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
        try:
            self._serve_request(client, body)
        except ProtocolError as exc:  # raised before any reply is sent
            send_message(client, protocol.error_reply(exc.errno, exc.message))

    def _serve_request(self, client: socket.socket, body: framing.JsonObject) -> None:
        op = body.get("op")
        if op == "list":
            send_message(client, {"planes": [p.info.to_json() for p in self._registry.planes()]})
        elif op == "watch":
            send_message(client, protocol.WATCHING)
        elif op == "get":
            key = protocol.key_of(body)
            # The publisher (the display backend's ring thread) may close the handle of
            # a plane it replaces at any time, but not while this holds the lock.
            with self._registry.handles_lock:
                plane = self._registry.get(key)
                if plane is None:
                    raise ProtocolError(errno.ENOENT, f"no plane {key}")
                send_message(
                    client, {"plane": plane.info.to_json(), "buffer": plane.handle is not None}
                )
                if plane.handle is not None:
                    plane.handle.send(client)
        elif op == "copy":
            self._send_copy(client, protocol.key_of(body))
        elif op == "input":
            receipt = self._input(body)
            send_message(client, {"queued": receipt.queued, "dropped": receipt.dropped})
        else:
            raise ProtocolError(errno.EINVAL, f"unknown op {op!r}")

    def _send_copy(self, client: socket.socket, key: PlaneKey) -> None:
        where = f"connector {key.domid}/{key.devid}/{key.connector}"
        try:
            copied = self._copy_frame(key)
        except OSError as exc:  # mapping the guest's buffer, or making the copy's
            raise ProtocolError(exc.errno or errno.EIO, f"cannot copy {where}: {exc}") from exc
        if copied is None:
            raise ProtocolError(errno.ENOENT, f"{where} shows nothing")
        info, copy = copied
        try:
            send_message(client, {"plane": info.to_json(), "buffer": True})
            copy.send(client)
        finally:
            copy.close()

    def _copy_frame(self, key: PlaneKey) -> tuple[PlaneInfo, SharedBuffer] | None:
        # The guest's next flip waits for the copy made under `frames_lock`, so that copy
        # goes to memory already faulted in (a page fault per page of a fresh buffer made
        # it five times slower); the buffer sent is filled after the lock is let go.
        seen = self._registry.get(key)
        if seen is not None:
            self._scratch_for(seen.info.frame_bytes)
        with self._registry.frames_lock(key), self._registry.handles_lock:
            plane = self._registry.get(key)
            if plane is None or plane.handle is None:
                return None
            info = plane.info
            scratch = self._scratch_for(info.frame_bytes)
            with plane.handle.map() as source:
                picture = source.array()[info.offset : info.offset + info.frame_bytes]
                copied = picture.size
                scratch[:copied] = picture
                del picture
        copy = SharedBuffer.allocate(max(1, -(-info.frame_bytes // mmap.PAGESIZE)))
        try:
            os.pwrite(copy.fds[0], scratch.data[:copied], 0)
        except BaseException:
            copy.close()
            raise
        return info, copy

    def _scratch_for(self, size: int) -> npt.NDArray[np.uint8]:
        """Memory for a frame of `size` bytes, faulted in; it grows to the largest frame
        copied and is reused (only the loop's thread copies)."""
        if self._scratch.size < size:
            self._scratch = np.zeros(size, np.uint8)
            self._scratch.fill(1)  # np.zeros maps untouched pages: touch every one now
        return self._scratch

    def _input(self, body: framing.JsonObject) -> InputReceipt:
        key = protocol.key_of(body)
        events = protocol.events_of(body)
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
        event = protocol.change_event(info, removed)
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
