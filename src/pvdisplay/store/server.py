"""asyncio xenstored: unix sockets around the sans-IO `Engine`.

Sockets in the socket directory:
- `socket`: dom0, read-write (mode 0600)
- `socket_ro`: dom0, read-only (mode 0660), its connections held to one guest's quotas
- `domain/<domid>`: that domain's own socket, from its INTRODUCE to its RELEASE (0600)

Output is flow-controlled per connection. Messages go straight to the socket
while it accepts them; once the kernel buffer is full they wait in a queue.
While `Quotas.outstanding` replies wait, the connection's requests are not
read, as xenstored stops reading a ring with too many outstanding requests.
Watch events beyond `Quotas.event_backlog` waiting ones are dropped, as
xenstored drops events over a domain's memory quota. Memory per connection
therefore stays bounded however slowly, or never, a client reads.
"""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, Self

from pvdisplay import logs
from pvdisplay.store.engine import (
    Close,
    Connection,
    DomainIntroduced,
    DomainReleased,
    Engine,
    Output,
    Send,
)
from pvdisplay.store.tree import QUOTA_MAX, Quotas, StoreError
from pvdisplay.wire.xs_wire import MessageReader, Oversized, XsMessage

log = logging.getLogger(__name__)
domain_log = logs.PeerLog(log)
"""Lines a domain's connections make us write, limited per domain."""

_LISTEN_BACKLOG = 64
# Linux's sun_path is 108 bytes, one of them the terminating NUL.
_SOCKET_PATH_MAX = 107
# QUOTA_MAX's digits: far below the length at which int() gives up.
_QUOTA_DIGITS_MAX = len(str(QUOTA_MAX))


class DaemonRunningError(OSError):
    """A live daemon answers on one of the sockets this one would bind."""


def quota_names() -> list[str]:
    """Quota names as the command line spells them (xenstored's -Q names)."""
    return [field.name.replace("_", "-") for field in fields(Quotas)]


def parse_quotas(settings: Iterable[str]) -> Quotas:
    """`["nodes=200", "watches=16"]` -> Quotas; ValueError names what is wrong."""
    values: dict[str, int] = {}
    for setting in settings:
        name, separator, number = setting.partition("=")
        if not separator or name not in quota_names():
            raise ValueError(
                f"{setting!r} is not NAME=N with NAME one of {', '.join(quota_names())}"
            )
        # str.isdigit() also takes digits int() refuses, such as "²".
        if not (number.isascii() and number.isdigit()) or len(number) > _QUOTA_DIGITS_MAX:
            raise ValueError(
                f"quota {name} needs a whole number of at most {_QUOTA_DIGITS_MAX} digits "
                f"0-9 ({name}=100), got {number!r}"
            )
        values[name.replace("-", "_")] = int(number)
    return Quotas(**values)


def _listening_socket(path: Path, mode: int) -> socket.socket:
    """Bind `path`, replacing a stale socket file but never a live daemon or another file."""
    size = len(os.fsencode(path))
    if size > _SOCKET_PATH_MAX:
        raise OSError(
            f"socket path {path} is {size} bytes, over the {_SOCKET_PATH_MAX} "
            "a unix socket address holds"
        )
    if path.is_socket():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(os.fspath(path))
            except OSError:
                path.unlink()
            else:
                raise DaemonRunningError(f"another xenstored is listening on {path}")
    elif path.exists() or path.is_symlink():
        raise OSError(f"{path} exists and is not a socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.fspath(path))
        os.chmod(path, mode)
        listener.listen(_LISTEN_BACKLOG)
    except OSError:
        listener.close()
        raise
    listener.setblocking(False)
    return listener


class _ClientProtocol(asyncio.Protocol):
    """One accepted socket: frames requests into the engine, writes its outputs back."""

    def __init__(self, server: "XenStoreServer", domid: int, read_only: bool) -> None:
        self._server = server
        self._domid = domid
        self._read_only = read_only
        self._reader = MessageReader()
        self._queue: deque[tuple[bytes, bool]] = deque()
        self._queued_replies = 0
        self._queued_events = 0
        self._dropped_events = 0
        self._writing_paused = False
        self._reading_stalled = False
        self.transport: asyncio.Transport | None = None
        self.connection: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        try:
            self.connection = self._server.engine.connect(self._domid, read_only=self._read_only)
        except StoreError as error:
            domain_log.warning(
                self._domid, "connection refused", domid=self._domid, reason=str(error)
            )
            transport.abort()
            return
        # Flow control per message: any bytes the kernel will not take pause writing.
        transport.set_write_buffer_limits(high=0)
        self._server.protocols[self.connection] = self
        domain_log.info(
            self._domid,
            "connected",
            conn=self.connection.serial,
            domid=self._domid,
            read_only=self._read_only,
        )

    def data_received(self, data: bytes) -> None:
        self._process(self._reader.feed(data))

    def _process(self, messages: Iterable[XsMessage | Oversized]) -> None:
        for message in messages:
            if self.connection is None or self.transport is None or self.transport.is_closing():
                return
            self._server.carry_out(self._server.engine.handle(self.connection, message))
            if self._queued_replies >= self._server.engine.quotas.outstanding:
                # The rest stays framed-but-unread in the reader until output drains.
                self.transport.pause_reading()
                self._reading_stalled = True
                return

    def send(self, message: XsMessage, is_event: bool) -> None:
        assert self.transport is not None
        if is_event and self._queued_events >= self._server.engine.quotas.event_backlog:
            if not self._dropped_events:
                log.warning("dropping watch events", extra=self._fields())
            self._dropped_events += 1
            return
        data = message.encode()
        if not self._writing_paused:
            self.transport.write(data)
            return
        self._queue.append((data, is_event))
        if is_event:
            self._queued_events += 1
        else:
            self._queued_replies += 1

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        assert self.transport is not None
        self._writing_paused = False
        while self._queue and not self._writing_paused:
            data, is_event = self._queue.popleft()
            if is_event:
                self._queued_events -= 1
            else:
                self._queued_replies -= 1
            self.transport.write(data)
        if self._reading_stalled and self._queued_replies < self._server.engine.quotas.outstanding:
            self._reading_stalled = False
            self.transport.resume_reading()
            self._process(self._reader.feed(b""))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection is None:
            return
        self._server.engine.disconnect(self.connection)
        self._server.protocols.pop(self.connection, None)
        domain_log.info(self._domid, "disconnected", **self._fields()["fields"])

    def _fields(self) -> dict[str, dict[str, object]]:
        serial = self.connection.serial if self.connection else None
        return logs.fields(conn=serial, domid=self._domid, dropped_events=self._dropped_events)


class XenStoreServer:
    """xenstored on unix sockets, for `pvdisplay xenstored` and in-process use.

    >>> async with XenStoreServer("/run/pvdisplay") as server:
    ...     await server.serve_forever()

    Domains are introduced and released by dom0 clients over `socket_path`
    (XS_INTRODUCE / XS_RELEASE), exactly as the Xen toolstack does.
    """

    def __init__(self, socket_dir: str | os.PathLike[str], quotas: Quotas | None = None) -> None:
        self.socket_dir = Path(socket_dir)
        self.engine = Engine(quotas)
        self.protocols: dict[Connection, _ClientProtocol] = {}
        self._dom0_servers: list[asyncio.Server] = []
        self._dom0_paths: list[Path] = []
        self._domain_servers: dict[int, asyncio.Task[asyncio.Server]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / "socket"

    @property
    def readonly_socket_path(self) -> Path:
        return self.socket_dir / "socket_ro"

    def domain_socket_path(self, domid: int) -> Path:
        return self.socket_dir / "domain" / str(domid)

    async def start(self) -> None:
        """Create the directory and the dom0 sockets; OSError if that is impossible.

        DaemonRunningError (an OSError) if another daemon listens in the directory.
        """
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.domain_socket_path(0).parent.mkdir(exist_ok=True)
        if not os.access(self.socket_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.socket_dir} is not writable")
        try:
            for path, read_only, mode in (
                (self.socket_path, False, stat.S_IRUSR | stat.S_IWUSR),
                (self.readonly_socket_path, True, 0o660),
            ):
                self._dom0_servers.append(await self._serve(path, 0, read_only, mode))
        except BaseException:
            await self.close()
            raise
        log.info("listening", extra=logs.fields(socket_dir=self.socket_dir))

    async def _serve(self, path: Path, domid: int, read_only: bool, mode: int) -> asyncio.Server:
        listener = _listening_socket(path, mode)
        self._dom0_paths.append(path)
        try:
            return await asyncio.get_running_loop().create_unix_server(
                lambda: _ClientProtocol(self, domid, read_only), sock=listener
            )
        except BaseException:
            listener.close()
            raise

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        for protocol in list(self.protocols.values()):
            if protocol.transport is not None:
                protocol.transport.abort()
        for domid in list(self._domain_servers):
            self._stop_domain(domid)
        while self._background:
            await asyncio.gather(*self._background)
        for server in self._dom0_servers:
            server.close()
            await server.wait_closed()
        self._dom0_servers.clear()
        for path in self._dom0_paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._dom0_paths.clear()
        self._closed.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def carry_out(self, outputs: list[Output]) -> None:
        for output in outputs:
            match output:
                case Send(connection, message):
                    protocol = self.protocols.get(connection)
                    if protocol is not None:
                        protocol.send(message, output.is_event)
                case Close(connection):
                    protocol = self.protocols.get(connection)
                    if protocol is not None and protocol.transport is not None:
                        protocol.transport.close()
                case DomainIntroduced(domid):
                    self._start_domain(domid)
                case DomainReleased(domid):
                    self._stop_domain(domid)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _start_domain(self, domid: int) -> None:
        """Bind now, so the socket exists by the time INTRODUCE is answered."""
        path = self.domain_socket_path(domid)
        try:
            listener = _listening_socket(path, stat.S_IRUSR | stat.S_IWUSR)
        except OSError as error:
            log.error("cannot open domain socket", extra=logs.fields(domid=domid, error=error))
            return
        self._domain_servers[domid] = asyncio.get_running_loop().create_task(
            asyncio.get_running_loop().create_unix_server(
                lambda: _ClientProtocol(self, domid, False), sock=listener
            )
        )

    def _stop_domain(self, domid: int) -> None:
        """Unlink now, so the domain can be introduced again at once; close in the background."""
        task = self._domain_servers.pop(domid, None)
        if task is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.domain_socket_path(domid).unlink()

        async def close_listener() -> None:
            server = await task
            server.close()
            await server.wait_closed()

        self._spawn(close_listener())


async def _serve_until_signalled(socket_dir: str | os.PathLike[str], quotas: Quotas) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    async with XenStoreServer(socket_dir, quotas):
        await stop.wait()
    log.info("stopped", extra=logs.fields(socket_dir=socket_dir))


def run(socket_dir: str | os.PathLike[str], quotas: Quotas) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; OSError if the sockets cannot be made."""
    asyncio.run(_serve_until_signalled(socket_dir, quotas))
