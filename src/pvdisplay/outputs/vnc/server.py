"""The asyncio side of the VNC server: one RFB listener per connector.

`VncServer` follows the display backend's planes through the outputs' `PlaneFeed`. Each
connector that shows up gets its own TCP port (`port`, `port + 1`, ... in order of
appearance, kept for the life of the server, so a guest that reconnects or a backend that
restarts keeps its address). Every client session runs the sans-IO
`rfb.ServerConnection`, reads frames from the feed (zero-copy mapped, compared in place
and shared by all clients of the connector, kept current tile by tile in a
`CanonicalMirror`), encodes off the event loop, and sends input back through the feed.

A client gets at most one update per request it sent, built from the newest frame
when it is ready for it: a slow client skips frames, it never queues them, and the next
update is not built before the last one has gone to the kernel, so the server holds one
pending frame per client at most. At most `max_clients` are served at once; more are
closed at accept.
"""

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Final, Self

import numpy as np

from pvdisplay import logs
from pvdisplay.outputs import listen
from pvdisplay.outputs.feed.mirror import CanonicalMirror, Frame, Snapshot, TileMask
from pvdisplay.outputs.feed.plane_feed import PlaneFeed
from pvdisplay.outputs.feed.rect import Rect
from pvdisplay.outputs.listen import DEFAULT_HOST
from pvdisplay.outputs.vnc import rfb
from pvdisplay.outputs.vnc.limits import DEFAULT_MAX_CLIENTS, DEFAULT_PORT
from pvdisplay.outputs.vnc.pointer import InputTranslator
from pvdisplay.outputs.vnc.updates import UpdateEncoder
from pvdisplay.planes.input_events import InputEvent, Key, PointerMove
from pvdisplay.planes.model import PlaneInfo, PlaneKey

log = logging.getLogger(__name__)
client_log = logs.PeerLog(log)
"""Lines network clients can make us write, limited per client address."""

READ_SIZE: Final = 1 << 16
MAX_PORT: Final = 65535
DISPLAY_BASE_PORT: Final = 5900
"""Viewers call port 5900 + N display N (`vncviewer HOST:N`)."""
BLANK_SIZE: Final = (640, 480)


Feed = PlaneFeed[CanonicalMirror]


class NoListenerError(OSError):
    """The server listens for no connector: each one's port failed (the message says how)."""


@dataclass(frozen=True)
class Picture:
    """A connector's frame: the plane it came from (None: gone) and its canonical pixels,
    the mirror's frame as of `snapshot` (None: a blank frame of its own)."""

    plane: PlaneInfo | None
    frame: Frame
    snapshot: Snapshot[CanonicalMirror] | None = None

    def changed_after(self, previous: "Picture | None") -> TileMask | None:
        """The tiles that may differ from `previous`, None if unknown (compare them)."""
        if previous is None or self.snapshot is None:
            return None
        return self.snapshot.changed_after(previous.snapshot)


async def current_picture(feed: Feed, key: PlaneKey) -> Picture:
    """The connector's picture now; clients of one connector share each update."""
    capture = await feed.capture(key)
    if capture is None:
        return _blank(feed.planes.get(key))
    return Picture(capture.info, capture.snapshot.mirror.frame, capture.snapshot)


def desktop_size(plane: PlaneInfo | None) -> tuple[int, int]:
    """What a client sees: the connector's `shown_size`, or `BLANK_SIZE` once it is gone."""
    return BLANK_SIZE if plane is None else plane.shown_size


def _blank(plane: PlaneInfo | None) -> Picture:
    width, height = desktop_size(plane)
    return Picture(plane, np.zeros((height, width), dtype=np.uint32))


def _on_connector(events: list[InputEvent], plane: PlaneInfo | None) -> list[InputEvent]:
    """Pointer positions from the client's framebuffer to the connector, which shows that
    framebuffer at the guest's SET_CONFIG (x, y)."""
    if plane is None or (plane.x, plane.y) == (0, 0):
        return events
    return [
        PointerMove(event.x + plane.x, event.y + plane.y)
        if isinstance(event, PointerMove)
        else event
        for event in events
    ]


def desktop_name(key: PlaneKey, plane: PlaneInfo | None) -> str:
    unique_id = plane.unique_id if plane is not None else str(key.connector)
    return f"{unique_id} (domain {key.domid}, vdispl {key.devid}, connector {key.connector})"


class _Session:
    """One client: reads its messages, answers its update requests, forwards its input."""

    def __init__(
        self,
        feed: Feed,
        key: PlaneKey,
        password: str | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.feed = feed
        self.key = key
        self.reader = reader
        self.writer = writer
        self.address = _address(writer)
        self.connection = rfb.ServerConnection(password, os.urandom(rfb.CHALLENGE_SIZE))
        self.translator = InputTranslator()
        self.held: set[int] = set()
        """Keys and buttons this client has down in the guest."""
        self.encoder: UpdateEncoder | None = None
        self.given: Picture | None = None  # the picture the encoder saw last
        self.request: rfb.UpdateRequest | None = None
        self.requested = asyncio.Event()

    async def run(self) -> None:
        updates: asyncio.Task[None] | None = None
        # drain() then waits until an update is wholly in the kernel: one frame pending.
        transport = self.writer.transport
        assert isinstance(transport, asyncio.WriteTransport)
        transport.set_write_buffer_limits(high=0)
        try:
            self.writer.write(self.connection.data_to_send())
            while data := await self.reader.read(READ_SIZE):
                for event in self.connection.receive(data):
                    if isinstance(event, rfb.ClientInit):
                        self._server_init()
                        updates = asyncio.create_task(self._send_updates())
                    elif isinstance(event, rfb.Closed):
                        client_log.info(self.address, "vnc client closed", reason=event.reason)
                    else:
                        await self._handle(event)
                self.writer.write(self.connection.data_to_send())
                if self.connection.closed:
                    break
        finally:
            if updates is not None:
                updates.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await updates
            # A client that goes away cannot lift what it holds: the guest would keep it.
            await self._send_input([Key(code, False) for code in sorted(self.held)])
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    def _server_init(self) -> None:
        plane = self.feed.planes.get(self.key)
        width, height = desktop_size(plane)
        self.connection.server_init(width, height, desktop_name(self.key, plane))
        client_log.info(
            self.address,
            "vnc client connected",
            plane=self.key,
            version=f"3.{self.connection.minor_version}",
            security=self.connection.security_type,
            size=f"{width}x{height}",
        )
        self.encoder = UpdateEncoder(width, height)

    async def _handle(self, event: rfb.Event) -> None:
        assert self.encoder is not None
        if isinstance(event, rfb.SetPixelFormat):
            self.encoder.pixel_format = event.pixel_format
        elif isinstance(event, rfb.SetEncodings):
            self.encoder.encodings = event.encodings
            client_log.info(
                self.address,
                "vnc client encodings",
                plane=self.key,
                encoding=rfb.ENCODING_NAMES[self.encoder.encoding],
                copyrect=rfb.ENCODING_COPYRECT in event.encodings,
                desktop_size=rfb.ENCODING_DESKTOP_SIZE in event.encodings,
            )
        elif isinstance(event, rfb.UpdateRequest):
            self.request = _merged(self.request, event)
            self.requested.set()
        elif isinstance(event, rfb.KeyEvent):
            await self._send_input(self.translator.key(event))
        elif isinstance(event, rfb.PointerEvent):
            events = _on_connector(self.translator.pointer(event), self.feed.planes.get(self.key))
            await self._send_input(events)

    async def _send_input(self, events: list[InputEvent]) -> None:
        for event in events:
            if isinstance(event, Key):
                if event.pressed:
                    self.held.add(event.code)
                else:
                    self.held.discard(event.code)
        await self.feed.send_input(self.key, events)

    async def _send_updates(self) -> None:
        """Answer each request with the newest frame once there is something to send."""
        assert self.encoder is not None
        seen = -1
        while True:
            await self.requested.wait()
            request = self.request
            assert request is not None
            if request.incremental and seen == self.feed.version(self.key):
                await self.feed.wait_change(self.key, seen)
            seen = self.feed.version(self.key)
            picture = await current_picture(self.feed, self.key)
            request = self.request
            assert request is not None
            changed, self.given = picture.changed_after(self.given), picture
            update = await asyncio.to_thread(
                self.encoder.update, picture.frame, request.area, request.incremental, changed
            )
            if update is None:
                continue  # nothing changed where the client looks; wait for the next change
            if self.request is request:  # else a newer request arrived meanwhile: keep it
                self.request = None
                self.requested.clear()
            self.writer.write(update)
            await self.writer.drain()


def _address(writer: asyncio.StreamWriter) -> str:
    """The client's address (its host: one allowance for all its connections)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _merged(pending: rfb.UpdateRequest | None, new: rfb.UpdateRequest) -> rfb.UpdateRequest:
    """Requests not yet answered become one: the union of areas, full if any was."""
    if pending is None:
        return new
    left = min(pending.area.x, new.area.x)
    top = min(pending.area.y, new.area.y)
    right = max(pending.area.x + pending.area.width, new.area.x + new.area.width)
    bottom = max(pending.area.y + pending.area.height, new.area.y + new.area.height)
    return rfb.UpdateRequest(
        pending.incremental and new.incremental, Rect(left, top, right - left, bottom - top)
    )


class VncServer:
    """RFB listeners for every connector a display backend publishes.

    `port` 0 gives each connector an ephemeral port (see `ports`). With a `password`
    clients must pass VNC authentication (only its first 8 characters count, as in RFB).
    """

    def __init__(
        self,
        planes_socket: str | os.PathLike[str],
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        password: str | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self.feed: Feed = PlaneFeed(planes_socket, CanonicalMirror)
        self.max_clients = max_clients
        self.host = host
        self.port = port
        self.password = password
        self.ports: dict[PlaneKey, int] = {}
        self._servers: list[asyncio.Server] = []
        self._sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._opener: asyncio.Task[None] | None = None
        self._next_port = port
        self._listening = asyncio.Condition()
        self._seen: set[PlaneKey] = set()
        self._new_keys: asyncio.Queue[PlaneKey] = asyncio.Queue()

    async def start(self) -> None:
        """Connect to the backend (OSError when it is not there) and listen for every
        connector it publishes, from now on."""
        self.feed.subscribe(self._on_change)
        await self.feed.connect()
        self._opener = asyncio.create_task(self._open_listeners())

    async def serving(self) -> None:
        """Wait while the server serves; `NoListenerError` once it listens for no connector
        because every connector's port failed."""
        assert self._opener is not None, "start() first"
        await self._opener

    async def wait_port(self, key: PlaneKey) -> int:
        """The port serving `key`, once it is listening."""
        async with self._listening:
            await self._listening.wait_for(lambda: key in self.ports)
        return self.ports[key]

    async def close(self) -> None:
        if self._opener is not None:
            self._opener.cancel()
            # NoListenerError was raised to serving()'s caller already.
            with contextlib.suppress(asyncio.CancelledError, NoListenerError):
                await self._opener
        for server in self._servers:
            server.close()
        # Closing the connections ends each session (its read sees EOF); cancelling the
        # tasks instead would upset asyncio's stream server, which inspects them.
        for writer in self._sessions.values():
            writer.close()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        await self.feed.close()

    @property
    def clients(self) -> int:
        """Clients being served now."""
        return len(self._sessions)

    def write_backlog(self) -> list[int]:
        """Bytes each client's connection holds that the kernel has not taken yet."""
        return [writer.transport.get_write_buffer_size() for writer in self._sessions.values()]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _on_change(self, key: PlaneKey | None) -> None:
        if key is not None and key not in self._seen:
            self._seen.add(key)
            self._new_keys.put_nowait(key)

    async def _open_listeners(self) -> None:
        while True:
            keys = [await self._new_keys.get()]
            while not self._new_keys.empty():
                keys.append(self._new_keys.get_nowait())
            failures = [failure for key in keys if (failure := await self._listen(key))]
            if failures and not self._servers:
                raise NoListenerError(
                    f"cannot listen for any connector: {'; '.join(failures)}; pass a free "
                    "--listen HOST:PORT (each further connector takes the next port)"
                )

    async def _listen(self, key: PlaneKey) -> str | None:
        """Listen for `key` on the next port; what went wrong, or None."""
        wanted = self._next_port
        if self.port != 0:
            self._next_port += 1
        address = listen.format_address(self.host, wanted)
        try:
            if wanted > MAX_PORT:
                raise OSError(f"no port left: ports end at {MAX_PORT}")
            server = await asyncio.start_server(
                lambda r, w, key=key: self._accept(key, r, w),  # type: ignore[misc]
                self.host,
                wanted,
            )
        except OSError as error:
            reason = listen.bind_failure(error)
            log.error(
                "vnc port unavailable; this connector is not served",
                extra=logs.fields(plane=key, address=address, reason=reason),
            )
            return f"{address}: {reason}"
        self._servers.append(server)
        async with self._listening:
            self.ports[key] = port = server.sockets[0].getsockname()[1]
            self._listening.notify_all()
        display = {"display": port - DISPLAY_BASE_PORT} if port >= DISPLAY_BASE_PORT else {}
        log.info(
            "vnc listening",
            extra=logs.fields(plane=key, address=listen.format_address(self.host, port), **display),
        )
        return None

    async def _accept(
        self, key: PlaneKey, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._sessions) >= self.max_clients:
            client_log.warning(
                _address(writer), "vnc client refused", plane=key, clients=self.clients
            )
            writer.close()
            return
        session = asyncio.current_task()
        assert session is not None
        self._sessions[session] = writer
        try:
            await _Session(self.feed, key, self.password, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            client_log.info(_address(writer), "vnc client lost", plane=key, reason=error)
        finally:
            self._sessions.pop(session, None)


async def serve(
    planes_socket: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    password: str | None = None,
    max_clients: int = DEFAULT_MAX_CLIENTS,
) -> None:
    """Serve every connector of the backend at `planes_socket` until cancelled, or until
    `NoListenerError`."""
    async with VncServer(planes_socket, host, port, password, max_clients) as server:
        await server.serving()
