"""The web viewer's aiohttp server: pages, the live index, and one WebSocket per viewer.

    viewer = WebViewer(planes_socket, host="127.0.0.1", port=8080, xenstore_socket=path)
    await viewer.start()        # viewer.url: http://127.0.0.1:8080/
    ...
    await viewer.close()

or `await serve(planes_socket, host, port)` to run until cancelled, or
`BackgroundViewer(planes_socket, host, port)` from synchronous code (a thread of its
own). The server reads the display backend's planes through the outputs' `PlaneFeed`,
and of xenstored's read-only socket for the domain names the index shows (`names`);
everything it decides (diffs, encodings, pacing, input decoding) is in the sans-IO
modules next to it.
"""

import asyncio
import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from pvdisplay import logs
from pvdisplay.outputs.feed.mirror import GuestMirror
from pvdisplay.outputs.feed.plane_feed import PlaneFeed
from pvdisplay.outputs.listen import DEFAULT_HOST, format_address, is_loopback, warn_if_exposed
from pvdisplay.outputs.web.browser_input import BrowserInput
from pvdisplay.outputs.web.limits import DEFAULT_MAX_CLIENTS, DEFAULT_PORT
from pvdisplay.outputs.web.names import DomainNames
from pvdisplay.outputs.web.session import ViewerSession
from pvdisplay.outputs.web.thumbnails import Thumbnails
from pvdisplay.outputs.web.tiles import DEFAULT_QUALITY, Quality
from pvdisplay.planes.input_events import InputEvent, Key, TouchUp
from pvdisplay.planes.model import PlaneInfo, PlaneKey
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)
client_log = logs.PeerLog(log)
"""Lines network clients can make us write, limited per client address."""

STATIC_DIR: Final = Path(__file__).parent / "static"
INDEX_PERIOD: Final = 0.5
MAX_CLIENT_MESSAGE: Final = 64 * 1024
START_TIMEOUT: Final = 30.0
# Changes this small are encoded in the loop (well under a millisecond): handing them to
# the encoder threads would cost more than encoding them.
INLINE_PIXELS: Final = 8 * 64 * 64


class WebViewer:
    """The web viewer for the backend serving `planes_socket`; loopback unless told.

    The index names each domain as XenStore at `xenstore_socket` does (None: no names).
    """

    def __init__(
        self,
        planes_socket: str | os.PathLike[str],
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        quality: Quality = DEFAULT_QUALITY,
        xenstore_socket: str | os.PathLike[str] | None = None,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self.host = host
        self.max_clients = max_clients
        self.clients = 0
        """WebSockets open now."""
        self._sockets: set[web.WebSocketResponse] = set()
        self.port = port
        self.quality = quality
        self.feed = PlaneFeed(planes_socket, GuestMirror)
        self.names = DomainNames(xenstore_socket)
        self.encoders = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="web-encode")
        self.thumbnails = Thumbnails(self.feed, self.encoders)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Listen (port 0 picks a free port; `port` then tells which) and follow the backend."""
        app = web.Application(middlewares=[self._guard])
        app.on_shutdown.append(self._close_sockets)
        app.add_routes(
            [
                web.get("/", self._page("index.html")),
                web.get("/wall", self._page("wall.html")),
                web.get(
                    "/view/{domid:\\d+}/{devid:\\d+}/{connector:\\d+}", self._page("view.html")
                ),
                web.get("/api/planes", self._planes),
                web.get("/thumb/{domid:\\d+}/{devid:\\d+}/{connector:\\d+}", self._thumbnail),
                web.get("/ws/index", self._index_socket),
                web.get("/ws/view/{domid:\\d+}/{devid:\\d+}/{connector:\\d+}", self._view_socket),
                web.static("/static", STATIC_DIR),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])  # the one bound, when asked for 0
        # Here, not where the address is parsed: by now a host's run dir log is open.
        warn_if_exposed(
            "the web viewer",
            self.host,
            format_address(self.host, self.port),
            "listen on 127.0.0.1 and reach it through an SSH tunnel",
        )
        self.feed.start()
        log.info("web viewer listening", extra=logs.fields(url=self.url))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.thumbnails.close()
        await self.feed.close()
        await self.names.close()
        self.encoders.shutdown(wait=True)

    async def _close_sockets(self, _app: web.Application) -> None:
        """Each page is told the viewer is going: the server's shutdown waits for the
        handlers, and each serves its page until that page goes."""
        await asyncio.gather(
            *(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"viewer stopping")
                for ws in self._sockets
            )
        )

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Refuse other web sites' pages: a page from elsewhere may not open our sockets
        (its Origin differs), and on loopback a DNS-rebound name may not reach us at all."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="cross-origin requests are refused")
        asked_for = urlsplit(f"//{request.host}").hostname or ""
        if is_loopback(self.host) and not is_loopback(asked_for):
            raise web.HTTPForbidden(text="this viewer answers to loopback names only")
        return await handler(request)

    # -- pages ---------------------------------------------------------------------------

    @staticmethod
    def _page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def page(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(STATIC_DIR / name)

        return page

    async def _listing(self) -> dict[str, object]:
        planes = sorted(self.feed.planes.items(), key=lambda item: _sort_key(item[0]))
        names = await self.names.lookup(key.domid for key, _ in planes)
        now = time.monotonic()
        rows = []
        for key, info in planes:
            rate = self.feed.rates.get(key)
            rows.append(
                {
                    **info.to_json(),
                    "name": names.get(key.domid, ""),
                    "fps": round(rate.fps(now), 1) if rate else 0.0,
                    "latency_ms": round(rate.latency * 1000, 2) if rate else 0.0,
                    "thumb": self.thumbnails.version(key),
                }
            )
        return {"backend": self.feed.connected, "planes": rows}

    async def _planes(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._listing())

    async def _thumbnail(self, request: web.Request) -> web.StreamResponse:
        """The connector's latest thumbnail, whatever version the page asks for (the
        version in its URL only makes the browser fetch again)."""
        jpeg = self.thumbnails.jpeg(_key_of(request))
        if jpeg is None:
            raise web.HTTPNotFound(text="no thumbnail for this connector")
        return web.Response(
            body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
        )

    @contextlib.asynccontextmanager
    async def _counted(self, request: web.Request) -> AsyncIterator[web.WebSocketResponse]:
        """A WebSocket within `max_clients`, else 503 before the handshake."""
        if self.clients >= self.max_clients:
            client_log.warning(request.remote, "web client refused", clients=self.clients)
            raise web.HTTPServiceUnavailable(text="too many viewers")
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_CLIENT_MESSAGE)
        self.clients += 1
        try:
            await ws.prepare(request)
            self._sockets.add(ws)
            yield ws
        finally:
            self._sockets.discard(ws)
            self.clients -= 1

    async def _index_socket(self, request: web.Request) -> web.StreamResponse:
        """The list of connectors, live; with thumbnails kept fresh unless `?thumbnails=0`
        (the wall, which draws every connector itself)."""
        wants_thumbnails = request.query.get("thumbnails") != "0"
        async with (
            self._counted(request) as ws,
            self.thumbnails.watched() if wants_thumbnails else contextlib.nullcontext(),
        ):
            return await self._serve_index(ws)

    async def _serve_index(self, ws: web.WebSocketResponse) -> web.StreamResponse:
        reader = asyncio.create_task(_drain(ws))
        try:
            last = None
            while not ws.closed and not reader.done():
                listing = await self._listing()
                if listing != last:
                    await ws.send_json(listing)
                    last = listing
                await asyncio.sleep(INDEX_PERIOD)
        except ConnectionError:
            pass
        finally:
            reader.cancel()
        return ws

    # -- one viewer of one connector --------------------------------------------------------

    async def _view_socket(self, request: web.Request) -> web.StreamResponse:
        async with self._counted(request) as ws:
            return await self._serve_view(_key_of(request), ws, str(request.remote))

    async def _serve_view(
        self, key: PlaneKey, ws: web.WebSocketResponse, remote: str
    ) -> web.StreamResponse:
        viewer = _Viewer(self, key, ws, remote)
        unsubscribe = self.feed.subscribe(viewer.on_change)
        reader = asyncio.create_task(viewer.read())
        try:
            await viewer.send_frames(reader)
        except ConnectionError:
            pass
        finally:
            unsubscribe()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            # A page that goes away cannot lift what it holds: the guest would keep it.
            released = viewer.input.release_all()
            if released:
                await self.feed.send_input(key, released)
        return ws


class _Viewer:
    """Sends one page the frames of one connector as fast as it acks them; takes its input."""

    def __init__(
        self, server: WebViewer, key: PlaneKey, ws: web.WebSocketResponse, remote: str
    ) -> None:
        self.server = server
        self.key = key
        self.ws = ws
        self.remote = remote
        """The page's address: its log lines are limited per address."""
        self.session = ViewerSession(server.quality)
        self.input = BrowserInput(1, 1)
        self.wake = asyncio.Event()
        self.wake.set()
        self._status: tuple[str, tuple[int, int, int, int] | None] | None = None

    def on_change(self, key: PlaneKey | None) -> None:
        if key is None or key == self.key:
            self.wake.set()

    async def send_frames(self, reader: asyncio.Task[None]) -> None:
        feed = self.server.feed
        loop = asyncio.get_running_loop()
        while not self.ws.closed and not reader.done():
            waiter = asyncio.ensure_future(self.wake.wait())
            await asyncio.wait(
                [waiter, reader],
                # Full window: the next ack wakes us, refresh or not.
                timeout=self.session.refresh_in(time.monotonic())
                if self.session.can_send()
                else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            self.wake.clear()
            info = feed.planes.get(self.key)
            if info is None or not info.fb_cookie:
                await self._announce("blank" if info else "disconnected", info)
                continue
            if not self.session.can_send():
                continue  # the next ack wakes us; by then a newer frame may be on screen
            capture = await feed.capture(self.key)
            if capture is None:
                continue
            await self._announce("live", capture.info)
            plan = self.session.plan(capture.snapshot, time.monotonic())
            if plan is None:
                continue
            if sum(rect.width * rect.height for rect in plan.rects) <= INLINE_PIXELS:
                encoded = [self.session.encode(plan, rect) for rect in plan.rects]
            else:
                encoded = await asyncio.gather(
                    *(
                        loop.run_in_executor(self.server.encoders, self.session.encode, plan, rect)
                        for rect in plan.rects
                    )
                )
            header: dict[str, object] = {
                "frame": capture.info.frame,
                "presented": capture.info.presented_at,
                "x": capture.info.x,
                "y": capture.info.y,
            }
            await self.ws.send_bytes(self.session.message(plan, header, encoded))

    async def _announce(self, state: str, info: PlaneInfo | None) -> None:
        """Tell the page what it is looking at, once per change of state or geometry."""
        geometry = None if info is None else (info.mode_width, info.mode_height, info.x, info.y)
        status = (state, geometry)
        if status == self._status:
            return
        self._status = status
        # Every domain with planes, as the index asks: a domain whose planes went is
        # forgotten, so a new domain given its id is read again.
        names = await self.server.names.lookup(key.domid for key in self.server.feed.planes)
        self.session.reset()
        if info is not None:
            self.input.resize(info.mode_width, info.mode_height)
        await self.ws.send_json(
            {
                "type": "status",
                "state": state,
                "backend": self.server.feed.connected,
                "plane": None if info is None else info.to_json(),
                "name": names.get(self.key.domid, ""),
            }
        )

    async def read(self) -> None:
        async for message in self.ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                body = json.loads(message.data)
                if not isinstance(body, dict):
                    raise ProtocolError(errno.EINVAL, "message is not an object")
                if body.get("type") == "ack" and isinstance(body.get("seq"), int):
                    self.session.ack(body["seq"])
                    self.wake.set()
                elif body.get("type") == "input":
                    events = self.input.decode(body)
                    live = self._status is not None and self._status[0] == "live"
                    if events and (live or all(map(_lets_go, events))):
                        await self.server.feed.send_input(self.key, events)
            except (ValueError, ProtocolError) as error:
                client_log.info(self.remote, "bad message from page", plane=self.key, reason=error)


def _lets_go(event: InputEvent) -> bool:
    """Releases reach the guest even while it shows nothing: it may still hold the key."""
    return isinstance(event, TouchUp) or (isinstance(event, Key) and not event.pressed)


async def _drain(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


def _key_of(request: web.Request) -> PlaneKey:
    match = request.match_info
    return PlaneKey(int(match["domid"]), int(match["devid"]), int(match["connector"]))


def _sort_key(key: PlaneKey) -> tuple[int, int, int]:
    return (key.domid, key.devid, key.connector)


class BackgroundViewer:
    """A `WebViewer` on an event loop thread of its own, for synchronous hosts (the
    emulated host's `host.run`, tests): starts at once, `close()` stops it."""

    def __init__(
        self,
        planes_socket: str | os.PathLike[str],
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        quality: Quality = DEFAULT_QUALITY,
        xenstore_socket: str | os.PathLike[str] | None = None,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="web-viewer")
        self._thread.start()
        self.viewer = WebViewer(
            planes_socket, host, port, quality, xenstore_socket, max_clients=max_clients
        )
        try:
            self._run(self.viewer.start())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def url(self) -> str:
        return self.viewer.url

    def close(self) -> None:
        try:
            self._run(self.viewer.close())
        finally:
            self._stop_loop()

    def _run(self, work: Coroutine[object, object, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(START_TIMEOUT)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
