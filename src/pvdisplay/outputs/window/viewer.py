"""The window: one connector's plane drawn with pygame (SDL 2), input sent back.

A local client of the display backend's planes socket, in one thread: each `step`
waits (up to a timeout) for the plane watch, takes every change that arrived, turns the
window's SDL events into guest input (`translate`), sends it with
`PlaneClient.send_input`, and redraws when the picture or the window changed. Display
buffers are received once per `buffer_id` and stay mapped (zero copy) while the guest
flips between them; each presented frame is converted to RGB straight out of the guest's
pages with `wire.fourcc.to_rgb`.
"""

import errno
import logging
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pygame

from pvdisplay import logs
from pvdisplay.ipc import framing
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.memory import SharedMapping
from pvdisplay.ipc.sockets import close_all, receive_message, recv_record, send_message
from pvdisplay.outputs.window.translate import InputTranslator, Viewport
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.input_events import MAX_INPUT_EVENTS, InputEvent
from pvdisplay.planes.model import PlaneInfo
from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)

RECONNECT_DELAY: Final = 0.5
STEP_TIMEOUT: Final = 1 / 120  # longest a key press waits for the next step
MAPPED_BUFFERS: Final = 3  # double or triple buffering reuses them; older ones go
INVISIBLE_DRIVERS: Final = frozenset({"offscreen", "dummy"})
_DIM: Final = (0, 0, 0, 160)
_TEXT: Final = (255, 255, 255)

State = Literal["live", "blank", "disconnected", "backend gone"]


class ViewerError(Exception):
    """Why the window cannot show the connector, in one line."""


@dataclass
class _Mapped:
    handle: SharedBuffer
    mapping: SharedMapping

    def close(self) -> None:
        self.mapping.close()
        self.handle.close()


def find_plane(planes: Sequence[PlaneInfo], domid: int, devid: int, connector: str) -> PlaneInfo:
    """The plane of connector `connector` (index or unique-id); LookupError names the choices."""
    candidates = [p for p in planes if p.domid == domid and p.devid == devid]
    for plane in candidates:
        if connector in (str(plane.connector), plane.unique_id):
            return plane
    choices = ", ".join(f"{p.connector} ({p.unique_id})" for p in candidates) or "none"
    raise LookupError(
        f"domain {domid} device {devid} has no connector {connector!r}; has {choices}"
    )


def _refuse_invisible_window() -> None:
    """SDL falls back to a driver that draws nowhere when there is no display; a window
    nobody sees would then run forever. Only a user who asked for it gets one."""
    driver = pygame.display.get_driver()
    if driver in INVISIBLE_DRIVERS and not os.environ.get("SDL_VIDEODRIVER"):
        raise ViewerError(
            f"no display to open a window on (SDL fell back to its {driver!r} driver, which "
            "shows nothing); set DISPLAY or WAYLAND_DISPLAY, or SDL_VIDEODRIVER="
            f"{driver} to run without one"
        )


def _picture_size(plane: PlaneInfo) -> tuple[int, int]:
    """The size the window is made: the picture the guest set (SET_CONFIG is its mode
    change), or the connector's resolution while it shows nothing."""
    if plane.fb_cookie and plane.width > 0 and plane.height > 0:
        return plane.width, plane.height
    return plane.mode_width, plane.mode_height


class Viewer:
    """A window showing connector `connector` (index or unique-id) of `domid`'s vdispl `devid`.

    Raises `ViewerError` when there is no backend, no such connector, or no display to
    open a window on. Drive it with `step()` (or `run()`), then `close()`.
    """

    def __init__(self, planes_socket: str | Path, domid: int, connector: str, devid: int = 0):
        self.planes_socket = Path(planes_socket)
        self.shown_frame: int | None = None  # `frame` of the picture drawn last
        self._mapped: dict[str, _Mapped] = {}
        self._watch: socket.socket | None = None
        self._assembler = framing.Assembler()
        self._query: PlaneClient | None = None
        self._retry_at = 0.0
        self._dirty = True
        try:
            self._watch = self._open_watch()
            plane = find_plane(self._client().list(), domid, devid, connector)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            self._close_sockets()
            raise ViewerError(
                f"no display backend at {self.planes_socket} ({error.strerror}); "
                "start `pvdisplay demo` or pass --planes-socket"
            ) from None
        except (LookupError, OSError, EOFError, ProtocolError) as error:
            self._close_sockets()
            raise ViewerError(str(error)) from None
        self.key = plane.key
        self.plane: PlaneInfo | None = plane
        self._size = _picture_size(plane)
        try:
            pygame.display.init()
            _refuse_invisible_window()
            pygame.font.init()
            self._open_window()
        except pygame.error as error:
            self.close()
            raise ViewerError(
                f"cannot open a window: {error} (no X11/Wayland display? "
                "SDL_VIDEODRIVER=dummy runs without one)"
            ) from None
        except ViewerError:
            self.close()
            raise
        self._picture = pygame.Surface(self._size)
        self._translator = InputTranslator(self._viewport())
        self._font = pygame.font.Font(None, 32)

    @property
    def state(self) -> State:
        if self._watch is None:
            return "backend gone"
        if self.plane is None:
            return "disconnected"
        return "live" if self.plane.fb_cookie else "blank"

    @property
    def window(self) -> pygame.Surface:
        """What the window shows (the display surface)."""
        return pygame.display.get_surface()

    def run(self) -> None:
        """Show the connector until the window is closed."""
        while self.step():
            pass

    def step(self, timeout: float = STEP_TIMEOUT) -> bool:
        """Wait up to `timeout` for plane changes, handle them and the window's events, redraw
        if needed. False once the window was closed."""
        self._follow_planes(timeout)
        events: list[InputEvent] = []
        self._translator.viewport = self._viewport()
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                return False
            if event.type in (pygame.WINDOWSIZECHANGED, pygame.WINDOWEXPOSED):
                self._dirty = True
                self._translator.viewport = self._viewport()
            events += self._translate(event)
        if events and self.state == "live":
            self._send(events)
        if self._dirty:
            self._draw()
        return True

    def close(self) -> None:
        self._close_sockets()
        for entry in self._mapped.values():
            entry.close()
        self._mapped.clear()
        pygame.display.quit()

    # -- planes ----------------------------------------------------------------------------

    def _open_watch(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.settimeout(5.0)
            sock.connect(str(self.planes_socket))
            send_message(sock, {"op": "watch"})
            close_all(receive_message(sock).fds)  # {"watching": true}: changes from here on
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._assembler = framing.Assembler()
        return sock

    def _client(self) -> PlaneClient:
        if self._query is None:
            self._query = PlaneClient(self.planes_socket)
        return self._query

    def _follow_planes(self, timeout: float) -> None:
        if self._watch is None:
            time.sleep(timeout)
            if time.monotonic() >= self._retry_at:
                self._reconnect()
            return
        try:
            if select.select([self._watch], [], [], timeout)[0]:
                self._drain_watch()
        except (OSError, EOFError, ProtocolError) as error:
            log.info("display backend gone", extra=logs.fields(reason=error))
            self._backend_gone()

    def _drain_watch(self) -> None:
        assert self._watch is not None
        while True:
            try:
                record, fds = recv_record(self._watch, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            message = self._assembler.feed(record, fds)
            if message is None:
                continue
            close_all(message.fds)
            info = PlaneInfo.from_json(message.body.get("plane"))
            if info.key == self.key:
                self._update(None if message.body.get("event") == "removed" else info)

    def _reconnect(self) -> None:
        self._retry_at = time.monotonic() + RECONNECT_DELAY
        try:
            self._watch = self._open_watch()
            current = [p for p in self._client().list() if p.key == self.key]
        except (OSError, EOFError, ProtocolError) as error:
            log.debug("display backend unavailable", extra=logs.fields(reason=error))
            self._backend_gone()
            return
        log.info("display backend connected", extra=logs.fields(path=self.planes_socket))
        self._dirty = True
        self._update(current[0] if current else None)

    def _backend_gone(self) -> None:
        self._close_sockets()
        self._update(None)
        self._retry_at = time.monotonic() + RECONNECT_DELAY

    def _update(self, plane: PlaneInfo | None) -> None:
        if plane is None:
            self._forget_buffers()
        elif plane.fb_cookie and _picture_size(plane) != self._size:
            self._size = _picture_size(plane)
            self._open_window()
            self._picture = pygame.Surface(self._size)
        self.plane = plane
        self._translator.viewport = self._viewport()
        self._dirty = True

    def _buffer(self, plane: PlaneInfo) -> SharedMapping | None:
        """The mapped buffer `plane` shows, asking the backend for it the first time."""
        entry = self._mapped.get(plane.buffer_id)
        if entry is None:
            try:
                _, handle = self._client().get(plane.domid, plane.connector, plane.devid)
            except (ConnectionError, EOFError, ProtocolError) as error:
                log.info("planes query lost", extra=logs.fields(reason=error))
                self._close_query()
                return None
            except OSError as error:  # ENOENT: removed meanwhile; its event is on the way
                log.debug("plane get failed", extra=logs.fields(reason=error))
                return None
            if handle is None:
                return None
            entry = self._mapped[handle.id] = _Mapped(handle, handle.map())
            while len(self._mapped) > MAPPED_BUFFERS:
                self._mapped.pop(next(iter(self._mapped))).close()
            if handle.id != plane.buffer_id:
                return None  # the guest flipped meanwhile; that change is on the way
        return entry.mapping

    def _forget_buffers(self) -> None:
        for entry in self._mapped.values():
            entry.close()
        self._mapped.clear()

    def _close_query(self) -> None:
        if self._query is not None:
            self._query.close()
            self._query = None

    def _close_sockets(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._close_query()

    # -- input -----------------------------------------------------------------------------

    def _translate(self, event: pygame.event.Event) -> list[InputEvent]:
        translator = self._translator
        kind = event.type
        if kind in (pygame.KEYDOWN, pygame.KEYUP):
            return translator.key(event.scancode, kind == pygame.KEYDOWN)
        if kind == pygame.WINDOWFOCUSLOST:
            return translator.release_all()
        if kind in (pygame.FINGERDOWN, pygame.FINGERMOTION, pygame.FINGERUP):
            if kind == pygame.FINGERUP:
                return translator.finger_up(event.touch_id, event.finger_id)
            finger = translator.finger_down if kind == pygame.FINGERDOWN else translator.finger_move
            return finger(event.touch_id, event.finger_id, event.x, event.y)
        if getattr(event, "touch", False):
            return []  # SDL's mouse emulation of a finger: the finger events carry it
        if kind == pygame.MOUSEMOTION:
            return translator.motion(*event.pos)
        if kind in (pygame.MOUSEBUTTONDOWN, pygame.MOUSEBUTTONUP):
            return translator.button(event.button, kind == pygame.MOUSEBUTTONDOWN, *event.pos)
        if kind == pygame.MOUSEWHEEL:
            return translator.wheel(event.y, bool(getattr(event, "flipped", False)))
        return []

    def _send(self, events: list[InputEvent]) -> None:
        for start in range(0, len(events), MAX_INPUT_EVENTS):
            try:
                self._client().send_input(self.key, events[start : start + MAX_INPUT_EVENTS])
            except (ConnectionError, EOFError, ProtocolError) as error:
                log.info("input connection lost", extra=logs.fields(reason=error))
                self._close_query()
                return
            except OSError as error:  # no vkbd bound to this connector: lost, as on hardware
                level = logging.DEBUG if error.errno == errno.ENOENT else logging.INFO
                log.log(level, "input not delivered", extra=logs.fields(reason=error))
                return

    # -- drawing ---------------------------------------------------------------------------

    def _open_window(self) -> None:
        pygame.display.set_mode(self._size, pygame.RESIZABLE)

    def _viewport(self) -> Viewport:
        live = self.plane is not None and self.plane.fb_cookie != 0
        origin = (self.plane.x, self.plane.y) if live and self.plane is not None else (0, 0)
        return Viewport(*self.window.get_size(), *self._size, *origin)

    def _draw(self) -> None:
        state = self.state
        if state == "live":
            assert self.plane is not None
            if not self._present(self.plane):
                return  # stays dirty: drawn once its buffer is here
        elif state == "blank":
            self._picture.fill((0, 0, 0))
        pygame.display.set_caption(self._caption(state))
        window = self.window
        window.fill((0, 0, 0))
        left, top, width, height = self._viewport().rect
        if (width, height) == self._size:
            window.blit(self._picture, (left, top))
        else:
            window.blit(pygame.transform.scale(self._picture, (width, height)), (left, top))
        if state != "live":
            self._overlay(window, state)
        pygame.display.flip()
        self._dirty = False

    def _present(self, plane: PlaneInfo) -> bool:
        """Convert the plane's picture into `_picture`; False if its buffer is not here yet."""
        mapping = self._buffer(plane)
        if mapping is None:
            return False
        try:
            fmt = fourcc.by_fourcc(fourcc.fourcc_code(plane.fourcc))
            pixels = np.frombuffer(mapping.view(), np.uint8)
            frame = pixels[plane.offset : plane.offset + plane.frame_bytes]
            rgb = np.ascontiguousarray(
                fourcc.to_rgb(fmt, frame, plane.width, plane.height, plane.stride)
            )
            del pixels, frame  # no view may outlive this call: mappings close later
        except (ProtocolError, ValueError) as error:
            log.warning("plane not drawable", extra=logs.fields(plane=plane.key, reason=error))
            return True
        picture = pygame.image.frombuffer(rgb.data, (plane.width, plane.height), "RGB")
        self._picture.blit(picture, (0, 0))
        self.shown_frame = plane.frame
        return True

    def _overlay(self, window: pygame.Surface, state: State) -> None:
        shade = pygame.Surface(window.get_size(), pygame.SRCALPHA)
        shade.fill(_DIM)
        window.blit(shade, (0, 0))
        text = self._font.render(state, True, _TEXT)
        window.blit(text, text.get_rect(center=window.get_rect().center))

    def _caption(self, state: State) -> str:
        domid, devid, connector = self.key.domid, self.key.devid, self.key.connector
        unique_id = f" ({self.plane.unique_id})" if self.plane is not None else ""
        width, height = self._size
        return (
            f"pvdisplay: domain {domid} device {devid} connector {connector}{unique_id} "
            f"{width}x{height} - {state}"
        )


def view(planes_socket: str | Path, domid: int, connector: str, devid: int = 0) -> None:
    """Open the window and show the connector until the window is closed (or Ctrl-C)."""
    viewer = Viewer(planes_socket, domid, connector, devid)
    try:
        viewer.run()
    finally:
        viewer.close()
