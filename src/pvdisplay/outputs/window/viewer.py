"""The window: one connector's plane drawn with pygame (SDL 2), input sent back.

The planes come from the outputs' `PlaneFeed`, run on an event loop of the window's own
in its one thread: each `step` runs the loop (up to a timeout, or until this connector
changes), turns the window's SDL events into guest input (`translate`) and sends it
through the feed, and redraws when the picture or the window changed. The feed maps
each display buffer once (zero copy) and keeps the connector's picture in a
`GuestMirror`; each presented frame is converted to RGB from it with `wire.fourcc.to_rgb`.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Final, Literal, TypeVar

import numpy as np
import pygame

from pvdisplay.outputs.feed.mirror import GuestMirror
from pvdisplay.outputs.feed.plane_feed import PlaneFeed
from pvdisplay.outputs.window.translate import InputTranslator, Viewport
from pvdisplay.planes.input_events import InputEvent
from pvdisplay.planes.model import PlaneInfo, PlaneKey, find_plane
from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)

STEP_TIMEOUT: Final = 1 / 120  # longest a key press waits for the next step
INVISIBLE_DRIVERS: Final = frozenset({"offscreen", "dummy"})
_DIM: Final = (0, 0, 0, 160)
_TEXT: Final = (255, 255, 255)

State = Literal["live", "blank", "disconnected", "backend gone"]


class ViewerError(Exception):
    """Why the window cannot show the connector, in one line."""


T = TypeVar("T")


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


class Viewer:
    """A window showing connector `connector` (index or unique-id) of `domid`'s vdispl `devid`.

    Raises `ViewerError` when there is no backend, no such connector, or no display to
    open a window on. Drive it with `step()` (or `run()`), then `close()`.
    """

    def __init__(self, planes_socket: str | Path, domid: int, connector: str, devid: int = 0):
        self.planes_socket = Path(planes_socket)
        self.shown_frame: int | None = None  # `frame` of the picture drawn last
        self._loop = asyncio.new_event_loop()
        self._feed: PlaneFeed[GuestMirror] = PlaneFeed(self.planes_socket, GuestMirror)
        self._changed = False  # this connector or the backend connection changed
        self._wake = asyncio.Event()
        self._dirty = True
        try:
            self._run(self._feed.connect())
            plane = find_plane(list(self._feed.planes.values()), domid, devid, connector)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            self._close_feed()
            raise ViewerError(
                f"no display backend at {self.planes_socket} ({error.strerror}); "
                "start `pvdisplay demo` or pass --planes-socket"
            ) from None
        except (LookupError, OSError, EOFError, ProtocolError) as error:
            self._close_feed()
            raise ViewerError(str(error)) from None
        self.key = plane.key
        self.plane: PlaneInfo | None = plane
        self._feed.subscribe(self._on_change)
        self._size = plane.shown_size
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
        if not self._feed.connected:
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
        self._close_feed()
        pygame.display.quit()

    # -- planes ----------------------------------------------------------------------------

    def _run(self, step: Coroutine[object, object, T]) -> T:
        return self._loop.run_until_complete(step)

    def _close_feed(self) -> None:
        if not self._loop.is_closed():
            self._run(self._feed.close())
            self._loop.close()

    def _on_change(self, key: PlaneKey | None) -> None:
        if key is None or key == self.key:
            self._changed = True
            self._wake.set()

    def _follow_planes(self, timeout: float) -> None:
        self._run(self._wait(timeout))
        if self._changed:
            self._changed = False
            self._update(self._feed.planes.get(self.key))

    async def _wait(self, timeout: float) -> None:
        """Let the feed run until this connector changes, `timeout` at most (with none, one
        turn of the loop: enough to send input, not to wait for a change)."""
        await asyncio.sleep(0)
        if not self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _update(self, plane: PlaneInfo | None) -> None:
        if plane is not None and plane.fb_cookie and plane.shown_size != self._size:
            self._size = plane.shown_size
            self._open_window()
            self._picture = pygame.Surface(self._size)
        self.plane = plane
        self._translator.viewport = self._viewport()
        self._dirty = True

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
        self._run(self._feed.send_input(self.key, events))

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
        capture = self._run(self._feed.capture(plane.key))
        if capture is None:
            return False
        shown, mirror = capture.info, capture.snapshot.mirror
        rgb = np.ascontiguousarray(
            fourcc.to_rgb(mirror.fmt, mirror.data, mirror.width, mirror.height, mirror.stride)
        )
        picture = pygame.image.frombuffer(rgb.data, (mirror.width, mirror.height), "RGB")
        self._picture.blit(picture, (0, 0))
        self.shown_frame = shown.frame
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
