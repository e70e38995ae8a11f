"""`pvdisplay vhost-user-gpu`: the asyncio adapter around `vhost_user.Backend` and `GpuDevice`.

One front-end (QEMU) at a time. With a listening socket, a front-end that goes away
leaves nothing behind (memory unmapped, fds closed, planes removed) and the next one is
accepted (a new QEMU; not `reconnect-ms`, docs/virtio-gpu.md). With an inherited,
connected descriptor (`--fd`) the server returns when that connection ends, as QEMU's
own back-end does.

The vhost-user socket is non-blocking: requests are framed as their bytes arrive
(`vhost_user.MessageReader`), so a front-end that stops mid-message stalls only itself,
never the loop serving the planes. Anything unforeseen while serving a request drops
that front-end, not the process. Kick eventfds are watched with `add_reader` and served
in the loop; the device interrupts the guest by writing the ring's call eventfd. What
the scanouts show reaches QEMU's display through the vhost-user-gpu socket as UPDATEs of
what the guest flushed (the whole picture when a scanout is (re)shown); flushes that
arrive while QEMU is still reading the previous update are merged into one rectangle:
QEMU always gets the latest picture, never a backlog.
"""

import array
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pvdisplay import logs
from pvdisplay.ipc.interfaces import Mapping
from pvdisplay.planes.model import PlaneInfo, PlaneKey, PlaneRegistry
from pvdisplay.planes.server import PlaneServer
from pvdisplay.virtio import gpu, vhost_user
from pvdisplay.virtio.gpu_resource import GpuRect
from pvdisplay.virtio.memory import GuestMemoryMap
from pvdisplay.virtio.virtqueue import Virtqueue
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)

CONTROL_QUEUE = 0
CURSOR_QUEUE = 1
DEVICE_INDEX = 0
"""The planes `devid` of the one GPU this process serves."""


class GpuQueues:
    """The virtio-gpu device as `vhost_user.Backend` drives it: queue 0 control, 1 cursor."""

    def __init__(
        self, device: gpu.GpuDevice, on_cursor: Callable[[gpu.Cursor | None], None]
    ) -> None:
        self.device = device
        self._on_cursor = on_cursor

    def handle_queue(self, index: int, queue: Virtqueue) -> bool:
        if index == CONTROL_QUEUE:
            return self.device.handle_control(queue)
        try:
            return self.device.handle_cursor(queue)
        finally:
            # Show what the guest set before a corrupt ring stopped the queue, too.
            self._on_cursor(self.device.cursor)

    def config_bytes(self) -> bytes:
        return self.device.config_bytes()

    def write_config(self, offset: int, data: bytes) -> None:
        self.device.write_config(offset, data)

    def remap(self, memory: GuestMemoryMap) -> None:
        self.device.remap(memory)

    def reset(self) -> None:
        self.device.reset()
        self._on_cursor(self.device.cursor)

    def close(self) -> None:
        self.device.close()


class Connection:
    """One front-end connection: the vhost-user socket, its kick fds and the display channel."""

    def __init__(
        self,
        sock: socket.socket,
        registry: PlaneRegistry,
        scanouts: Sequence[tuple[int, int]],
        domid: int,
    ) -> None:
        self._sock = sock
        self._registry = registry
        self._domid = domid
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._backend = vhost_user.Backend(
            lambda memory: GpuQueues(self._make_device(memory, scanouts), self._on_cursor),
            gpu.DEVICE_FEATURES,
            queues=2,
            on_gpu_socket=self._gpu_socket,
        )
        self._watched: dict[int, int] = {}
        self._display: vhost_user.DisplayChannel | None = None
        self._display_sock: socket.socket | None = None
        self._display_writing = False
        self._device: gpu.GpuDevice | None = None
        self._shown: dict[int, tuple[int, int]] = {}
        self._dirty: set[int] = set()
        # Connectors whose display surface is new, so their next update is the whole picture.
        self._whole: set[int] = set()
        self._unsubscribe = registry.subscribe(self._on_plane)
        self._reader = vhost_user.MessageReader()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._on_request)

    def _make_device(
        self, memory: GuestMemoryMap, scanouts: Sequence[tuple[int, int]]
    ) -> gpu.GpuDevice:
        self._device = gpu.GpuDevice(
            memory, scanouts=list(scanouts), planes=self._registry, guest_domid=self._domid
        )
        return self._device

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._unwatch_kicks()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._reader.close()
        self._close_display()
        self._backend.close()
        self._unsubscribe()
        log.info("front-end disconnected")

    def _on_request(self) -> None:
        """Read what has arrived of the next request; serve it once whole."""
        try:
            message = self._receive()
        except EOFError:
            self.close()
            return
        except (OSError, ProtocolError) as exc:
            log.warning("vhost-user connection failed", extra=logs.fields(reason=str(exc)))
            self.close()
            return
        if message is None:
            return
        self._unwatch_kicks()
        try:
            answer = self._backend.handle(message)
            if answer is not None:
                # A front-end that leaves its replies unread until the socket buffer is
                # full gets BlockingIOError here, and is dropped.
                self._sock.sendall(answer.encode())
        except (OSError, ProtocolError) as exc:
            log.warning(
                "vhost-user request refused",
                extra=logs.fields(request=message.request, reason=str(exc)),
            )
            self.close()
            return
        except Exception:
            # A bug, or a case nobody foresaw: drop this front-end, keep the process.
            log.exception("vhost-user request failed", extra=logs.fields(request=message.request))
            self.close()
            return
        self._watch_kicks()

    def _receive(self) -> vhost_user.VhostUserMessage | None:
        """The next whole request, or None until the rest of it has arrived; EOFError
        when the front-end closed the connection."""
        while True:
            fds = array.array("i")
            try:
                data, ancillary, flags, _ = self._sock.recvmsg(
                    self._reader.wanted,
                    socket.CMSG_SPACE(vhost_user.MAX_FDS * fds.itemsize),
                    socket.MSG_CMSG_CLOEXEC,
                )
            except BlockingIOError:
                return None
            for level, kind, item in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(item[: len(item) - len(item) % fds.itemsize])
            if flags & socket.MSG_CTRUNC or not data:
                for fd in fds:
                    os.close(fd)
                if not data:
                    raise EOFError("front-end closed the connection")
                raise vhost_user.VhostUserError(errno.EMSGSIZE, "more than MAX_FDS descriptors")
            message = self._reader.feed(data, list(fds))
            if message is not None:
                return message

    def _watch_kicks(self) -> None:
        for index, fd in self._backend.kick_fds.items():
            self._loop.add_reader(fd, self._on_kick, index, fd)
            self._watched[index] = fd

    def _unwatch_kicks(self) -> None:
        for fd in self._watched.values():
            self._loop.remove_reader(fd)
        self._watched = {}

    def _on_kick(self, index: int, fd: int) -> None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        try:
            interrupt = self._backend.process(index)
            if interrupt and (call := self._backend.call_fd(index)) is not None:
                os.eventfd_write(call, 1)
        except vhost_user.VhostUserError as exc:
            # The front-end broke what it promised (its memory shrank): drop it alone.
            log.warning("front-end dropped", extra=logs.fields(queue=index, reason=str(exc)))
            self.close()
            return
        except Exception:
            log.exception("virtqueue service failed", extra=logs.fields(queue=index))
            self.close()
            return
        if index not in self._backend.kick_fds:
            # The ring stopped (corrupt): its kicks no longer mean anything.
            self._loop.remove_reader(fd)
            del self._watched[index]

    def _gpu_socket(self, fd: int) -> None:
        self._close_display()
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self._display_sock = sock
        self._display = vhost_user.DisplayChannel()
        self._shown = {}
        for plane in self._registry.planes():
            self._on_plane(plane.info, removed=False)
        self._loop.add_reader(fd, self._on_display_readable)
        self._send_display()

    def _close_display(self) -> None:
        if self._display_sock is not None:
            self._loop.remove_reader(self._display_sock.fileno())
            self._loop.remove_writer(self._display_sock.fileno())
            self._display_sock.close()
        self._display_sock = None
        self._display = None
        self._display_writing = False

    def _on_display_readable(self) -> None:
        assert self._display_sock is not None and self._display is not None
        try:
            data = self._display_sock.recv(4096)
            if not data:
                # What QEMU does whenever it quits: nothing the user has to act on.
                log.info("display channel closed by QEMU")
                self._close_display()
                return
            self._display.receive(data)
        except BlockingIOError:
            return
        except (OSError, ProtocolError) as exc:
            log.warning("display channel closed", extra=logs.fields(reason=str(exc)))
            self._close_display()
            return
        self._send_display()

    def _on_plane(self, info: PlaneInfo, removed: bool) -> None:
        if self._display is None or (info.domid, info.devid) != (self._domid, DEVICE_INDEX):
            return
        size = (0, 0) if removed or not info.fb_cookie else (info.width, info.height)
        if self._shown.get(info.connector) != size:
            self._shown[info.connector] = size
            self._display.scanout(info.connector, *size)
            self._whole.add(info.connector)
        if size != (0, 0):
            self._dirty.add(info.connector)
        self._send_display()

    def _on_cursor(self, cursor: gpu.Cursor | None) -> None:
        if self._display is None:
            return
        try:
            self._display.show_cursor(cursor)
        except ProtocolError as exc:
            log.warning("cursor not shown", extra=logs.fields(reason=exc))
        self._send_display()

    def _send_display(self) -> None:
        """Write what the channel holds; queue the latest frames once it has drained."""
        display, sock = self._display, self._display_sock
        if display is None or sock is None:
            return
        while True:
            if display.ready and not display.pending:
                self._queue_frames(display)
            data = display.data_to_send()
            if not data:
                break
            try:
                sent = sock.send(data)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("display channel failed", extra=logs.fields(reason=str(exc)))
                self._close_display()
                return
            display.sent(sent)
        writing = bool(display.data_to_send())
        if writing != self._display_writing:
            if writing:
                self._loop.add_writer(sock.fileno(), self._send_display)
            else:
                self._loop.remove_writer(sock.fileno())
            self._display_writing = writing

    def _queue_frames(self, display: vhost_user.DisplayChannel) -> None:
        dirty, self._dirty = self._dirty, set()
        whole, self._whole = self._whole, set()
        for connector in sorted(dirty):
            plane = self._registry.get(PlaneKey(self._domid, DEVICE_INDEX, connector))
            if plane is None or plane.handle is None or not plane.info.fb_cookie:
                continue
            info = plane.info
            damage = self._device.take_damage(connector) if self._device is not None else None
            if connector in whole:
                damage = GpuRect(0, 0, info.width, info.height)
            elif damage is None:
                continue  # republished (a mode change), but no pixel changed
            try:
                pixels = xrgb_pixels(info, plane.handle.map(), damage)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cannot read scanout", extra=logs.fields(plane=info.key, reason=exc))
                continue
            display.update(connector, (damage.x, damage.y, damage.width, damage.height), pixels)


_XRGB_BYTES = {
    "XR24": (0, 1, 2, 3),
    "AR24": (0, 1, 2, 3),
    "BX24": (3, 2, 1, 0),
    "BA24": (3, 2, 1, 0),
    "XB24": (2, 1, 0, 3),
    "AB24": (2, 1, 0, 3),
    "RX24": (1, 2, 3, 0),
    "RA24": (1, 2, 3, 0),
}
"""Where each virtio-gpu format keeps the bytes x8r8g8b8 stores as B, G, R, X."""


def xrgb_pixels(info: PlaneInfo, mapping: Mapping, rect: GpuRect) -> bytes:
    """`rect` of the plane's picture as packed x8r8g8b8 rows, the one format QEMU's
    UPDATE takes; KeyError for a format that is not a virtio-gpu one."""
    with mapping:
        order = _XRGB_BYTES[info.fourcc]
        source = np.frombuffer(mapping.view(), np.uint8)
        start = info.offset + rect.y * info.stride
        rows = source[start : start + info.stride * rect.height].reshape(rect.height, info.stride)
        region = rows[:, rect.x * 4 : (rect.x + rect.width) * 4]
        if order == (0, 1, 2, 3):
            pixels = region.tobytes()
        else:
            pixels = region.reshape(rect.height, rect.width, 4)[..., order].tobytes()
        del source, rows, region
    return pixels


async def serve(
    listener: socket.socket | None,
    connected: socket.socket | None,
    scanouts: Sequence[tuple[int, int]],
    domid: int,
    planes_socket: Path | None,
) -> None:
    """Serve front-ends from `listener` forever, or the one `connected` socket until it ends.

    Returns on SIGTERM; Ctrl-C cancels it. Both sockets are closed on return, and the
    files of the listening socket and the planes socket removed. OSError whose `strerror`
    names what failed (the planes socket, accepting).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        task.cancel()

    socket_file = _SocketFile.of(listener)
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        await _serve(listener, connected, scanouts, domid, planes_socket)
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        task.uncancel()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        for owned in (listener, connected):
            if owned is not None:
                owned.close()
        if socket_file is not None:
            socket_file.remove()


async def _serve(
    listener: socket.socket | None,
    connected: socket.socket | None,
    scanouts: Sequence[tuple[int, int]],
    domid: int,
    planes_socket: Path | None,
) -> None:
    registry = PlaneRegistry()
    plane_server = None
    try:
        if planes_socket is not None:
            plane_server = _serve_planes(registry, planes_socket)
        if connected is not None:
            await _serve_connection(connected, registry, scanouts, domid)
            return
        assert listener is not None
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                raise _named(exc, "cannot accept a front-end") from None
            log.info("front-end connected")
            await _serve_connection(sock, registry, scanouts, domid)
    finally:
        if plane_server is not None:
            plane_server.close()


@dataclass(frozen=True)
class _SocketFile:
    """The file a listening unix socket was bound to, removed only if still that file:
    `listen` replaces a stale socket file, so another back-end may have taken the path."""

    path: Path
    identity: tuple[int, int]

    @classmethod
    def of(cls, listener: socket.socket | None) -> "_SocketFile | None":
        if listener is None:
            return None
        path = Path(listener.getsockname())
        try:
            status = path.stat()
        except OSError:
            return None
        return cls(path, (status.st_dev, status.st_ino))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            status = self.path.stat()
            if (status.st_dev, status.st_ino) == self.identity:
                self.path.unlink()


def _serve_planes(registry: PlaneRegistry, path: Path) -> PlaneServer:
    plane_server = PlaneServer(registry, path)
    try:
        _refuse_non_socket(path)
        plane_server.start()
    except OSError as exc:
        raise _named(exc, f"cannot serve planes on {path}") from None
    return plane_server


async def _serve_connection(
    sock: socket.socket, registry: PlaneRegistry, scanouts: Sequence[tuple[int, int]], domid: int
) -> None:
    connection = Connection(sock, registry, scanouts, domid)
    try:
        await connection.wait_closed()
    finally:
        connection.close()


def listen(path: Path) -> socket.socket:
    """A unix stream socket listening at `path` (a stale socket file is replaced);
    OSError whose `strerror` names the path."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _refuse_non_socket(path)
        listener.bind(str(path))
        listener.listen(1)
    except OSError as exc:
        listener.close()
        raise _named(exc, f"cannot listen on {path}") from None
    return listener


def inherited(fd: int) -> socket.socket:
    """The connected unix socket passed as descriptor `fd`; OSError if it is not one."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise _named(exc, f"descriptor {fd} is not a usable socket") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise OSError(errno.ENOTSOCK, f"descriptor {fd} is not a unix stream socket")
    return sock


def _refuse_non_socket(path: Path) -> None:
    """Binding over a file that is not a socket fails as "Address already in use", which
    misleads: say what is there instead."""
    if path.exists() and not path.is_socket():
        raise OSError(errno.EEXIST, "exists and is not a socket")


def _named(exc: OSError, what: str) -> OSError:
    return OSError(exc.errno, f"{what}: {exc.strerror or exc}")
