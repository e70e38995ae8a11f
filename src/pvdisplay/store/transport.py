"""Where the XenStore clients' bytes go: a xenstored Unix socket or the xenbus device.

A domain that runs xenstored (or reaches it over a socket) talks on a stream socket. A
domain without one has only `/dev/xen/xenbus`, a character device: each write() hands
the kernel one xs_wire request, and read() returns replies and watch events in the same
framing, so the sans-IO protocol in `store.protocol` is the same over both. The device
keeps only the first message of a write and drops whatever follows it in that write,
so `DeviceStream` writes one message per call.
"""

import asyncio
import contextlib
import errno
import os
import select
import socket
import stat
from typing import Protocol

from pvdisplay.wire import xs_wire

DEFAULT_RUN_DIR = "/run/xenstored"
LEGACY_SOCKET = "/var/run/xenstored/socket"
XENBUS_DEVICE = "/dev/xen/xenbus"


def default_socket_path() -> str:
    """The daemon socket libxenstore would use: $XENSTORED_PATH, else $XENSTORED_RUNDIR/socket."""
    explicit = os.environ.get("XENSTORED_PATH")
    if explicit:
        return explicit
    return os.path.join(os.environ.get("XENSTORED_RUNDIR") or DEFAULT_RUN_DIR, "socket")


def xenstore_path() -> str:
    """The xenstored socket if there is one ($XENSTORED_PATH wins), else the xenbus device."""
    if os.environ.get("XENSTORED_PATH"):
        return default_socket_path()
    for candidate in (default_socket_path(), LEGACY_SOCKET):
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(candidate).st_mode):
                return candidate
    return XENBUS_DEVICE


class Stream(Protocol):
    """What the blocking client needs of its connection; a socket is one."""

    def sendall(self, data: bytes, /) -> None: ...
    def recv(self, size: int, /) -> bytes: ...
    def fileno(self) -> int: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


def split_messages(data: bytes) -> list[bytes]:
    """Whole xs_wire messages in `data`, one per element (the caller writes whole ones)."""
    messages = []
    while data:
        if len(data) < xs_wire.HEADER.size:
            raise ValueError("a partial xs_wire header")
        *_, length = xs_wire.HEADER.unpack_from(data)
        end = xs_wire.HEADER.size + length
        if len(data) < end:
            raise ValueError("a partial xs_wire message")
        messages.append(data[:end])
        data = data[end:]
    return messages


class DeviceStream:
    """The xenbus device as a `Stream`; `shutdown()` wakes a thread blocked in `recv()`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def fileno(self) -> int:
        return self._fd

    def sendall(self, data: bytes, /) -> None:
        for message in split_messages(bytes(data)):
            written = os.write(self._fd, message)
            if written != len(message):
                # The device takes a message whole or refuses it; a short write
                # would leave the kernel holding half a request.
                raise OSError(errno.EIO, f"xenbus took {written} of {len(message)} bytes")

    def recv(self, size: int, /) -> bytes:
        """Up to `size` bytes; b"" once `shutdown()` was called, as a socket would give."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_read in ready:
                return b""
            try:
                return os.read(self._fd, size)
            except BlockingIOError:
                continue

    def shutdown(self, how: int, /) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def close(self) -> None:
        for fd in (self._fd, self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._wake_read = self._wake_write = -1


def connect(path: str | os.PathLike[str] | None) -> tuple[str, socket.socket | DeviceStream]:
    """Open `path` (default: `default_socket_path()`): a xenstored socket or a xenbus device."""
    resolved = os.fspath(path) if path is not None else default_socket_path()
    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no xenstored socket", resolved) from None
    if stat.S_ISCHR(mode):
        # O_NOCTTY: a terminal standing in for the device must not become ours.
        fd = os.open(resolved, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        return resolved, DeviceStream(fd)
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.ENOTSOCK, "neither a socket nor a xenbus device", resolved)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(resolved)
    except BaseException:
        sock.close()
        raise
    return resolved, sock


class MessageWriter(Protocol):
    """What the asyncio client needs of its writer; an `asyncio.StreamWriter` is one."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class DeviceWriter:
    """Writes to the xenbus device for the asyncio client, one message per write().

    The device takes a request as fast as it can pass it to xenstored's ring, so writes
    are made at once rather than buffered by a transport that could join two messages.
    Closing it closes the device and the read transport beside it.
    """

    def __init__(self, stream: DeviceStream, reading: asyncio.ReadTransport) -> None:
        self._stream = stream
        self._reading = reading

    def write(self, data: bytes) -> None:
        self._stream.sendall(data)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self._reading.close()
        self._stream.close()

    async def wait_closed(self) -> None:
        return None


async def open_streams(
    path: str | os.PathLike[str] | None,
) -> tuple[str, asyncio.StreamReader, MessageWriter]:
    """`connect()` for the asyncio client: a reader and a writer over the connection."""
    resolved, connection = connect(path)
    try:
        if isinstance(connection, socket.socket):
            reader, writer = await asyncio.open_unix_connection(sock=connection)
            return resolved, reader, writer
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        # The read transport owns a duplicate, so closing it leaves the writer's intact.
        device = os.fdopen(os.dup(connection.fileno()), "rb", buffering=0)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), device
            )
        except BaseException:
            device.close()
            raise
        return resolved, reader, DeviceWriter(connection, transport)
    except BaseException:
        connection.close()
        raise
