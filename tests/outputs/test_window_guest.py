"""`pvdisplay view`'s window against a real guest: pixels and input, end to end.

Real processes (xenstored, broker, display backend domain, a guest domain showing
`guests.pattern`'s pattern with a real vkbd, as `rigs` builds them); the window runs
in this process on SDL's dummy video driver, driven step by step, and its display
surface is read back with `pygame.surfarray`. Input is injected as SDL events with
`pygame.event.post`, exactly where SDL would queue a person's.
"""

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pygame
import pytest
from click.testing import CliRunner

import rigs
from pvdisplay.cli import main
from pvdisplay.guests.pattern import expected_rgb
from pvdisplay.outputs.window.viewer import Viewer, ViewerError
from pvdisplay.planes.client import PlaneClient
from pvdisplay.wire import fourcc

pytestmark = pytest.mark.processes

WIDTH, HEIGHT = 320, 240
BTN_LEFT, BTN_RIGHT, KEY_A = 0x110, 0x111, 30
FULL_VKB = "backend=0,feature-abs-pointer=1,feature-multi-touch=1,multi-touch-num-contacts=4"
ENTRY = "window_agents:guest"


class World(rigs.Rig):
    def add_guest(self, domid: int) -> rigs.Guest:
        return self.start_guest(ENTRY, vkb=FULL_VKB, resolution=f"{WIDTH}x{HEIGHT}", domid=domid)


@pytest.fixture(autouse=True)
def no_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # read when a window opens


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with rigs.backend_world(World) as running:
        yield running


def run_until(viewer: Viewer, condition: Callable[[], object], what: str) -> None:
    def stepped() -> object:
        assert viewer.step(0.01), "the window was closed"
        return condition()

    rigs.wait_until(stepped, what)


def shown(viewer: Viewer) -> np.ndarray:
    """The window's pixels, HxWx3 RGB."""
    return pygame.surfarray.array3d(viewer.window).transpose(1, 0, 2)


def current_frame(world: World, domid: int) -> int:
    with PlaneClient(world.planes_socket) as client:
        return next(p.frame for p in client.list() if p.domid == domid)


def post(kind: int, **attributes: Any) -> None:
    pygame.event.post(pygame.event.Event(kind, **attributes))


def test_window_shows_the_guest_exactly_and_input_lands_on_guest_pixels(world: World) -> None:
    guest = world.add_guest(21)
    viewer = Viewer(world.planes_socket, guest.domid, f"dom{guest.domid}")
    try:
        run_until(viewer, lambda: viewer.shown_frame == current_frame(world, 21), "first frame")
        assert viewer.window.get_size() == (WIDTH, HEIGHT)
        assert np.array_equal(shown(viewer), expected_rgb(fourcc.XRGB8888, WIDTH, HEIGHT, 0))
        assert "live" in pygame.display.get_caption()[0]

        # The person makes the window 900x600: the picture is 2.5x, with 50-pixel bars.
        pygame.display.set_mode((900, 600), pygame.RESIZABLE)
        run_until(viewer, lambda: bool(shown(viewer)[300, 450].any()), "the scaled picture")
        pixels = shown(viewer)
        assert not pixels[:, :50].any() and not pixels[:, 850:].any()
        assert pixels[:, 50:850].any(axis=2).mean() > 0.9

        # Guest pixel (100, 50) is drawn around window (301, 126).
        post(pygame.MOUSEBUTTONDOWN, pos=(301, 126), button=1, touch=False)
        post(pygame.MOUSEBUTTONUP, pos=(301, 126), button=1, touch=False)
        post(pygame.MOUSEBUTTONDOWN, pos=(301, 126), button=4, touch=False)  # legacy wheel
        post(pygame.MOUSEWHEEL, x=0, y=1, flipped=False, touch=False)
        viewer.step(0)
        clicked = guest.read_until(("Position", 100, 50, -1))
        assert clicked == [
            ("Position", 100, 50, 0),
            ("Key", True, BTN_LEFT),
            ("Key", False, BTN_LEFT),
            ("Position", 100, 50, -1),
        ]

        # Right button in the bar left of the picture: clamped to the picture's edge.
        post(pygame.MOUSEBUTTONDOWN, pos=(10, 599), button=3, touch=False)
        post(pygame.KEYDOWN, key=pygame.K_a, scancode=pygame.KSCAN_A, mod=0, unicode="a")
        post(pygame.KEYUP, key=pygame.K_a, scancode=pygame.KSCAN_A, mod=0, unicode="a")
        viewer.step(0)
        assert guest.read_until(("Key", False, KEY_A)) == [
            ("Position", 0, HEIGHT - 1, 0),
            ("Key", True, BTN_RIGHT),
            ("Key", True, KEY_A),
            ("Key", False, KEY_A),
        ]

        # Two fingers (SDL gives fractions of the window), one moves, both lift; the mouse
        # events SDL makes up for a finger are not sent twice.
        post(pygame.FINGERDOWN, touch_id=7, finger_id=70, x=0.5, y=0.25, dx=0.0, dy=0.0)
        post(pygame.MOUSEBUTTONDOWN, pos=(450, 150), button=1, touch=True)
        post(pygame.FINGERDOWN, touch_id=7, finger_id=71, x=0.1, y=0.9, dx=0.0, dy=0.0)
        post(pygame.FINGERMOTION, touch_id=7, finger_id=71, x=0.2, y=0.9, dx=0.1, dy=0.0)
        post(pygame.FINGERUP, touch_id=7, finger_id=70, x=0.5, y=0.25, dx=0.0, dy=0.0)
        post(pygame.FINGERUP, touch_id=7, finger_id=71, x=0.2, y=0.9, dx=0.0, dy=0.0)
        viewer.step(0)
        touched = [e for e in guest.read_until(("MtUp", 1)) if e[0] != "MtSyn"]
        # window (450, 150) -> guest (160, 60); (90, 540) -> (16, 216); (180, 540) -> (52, 216)
        assert touched == [
            ("MtDown", 0, 160, 60),
            ("MtDown", 1, 16, 216),
            ("MtMotion", 1, 52, 216),
            ("MtUp", 0),
            ("MtUp", 1),
        ]

        # The guest changes mode (a 200x150 RGB565 framebuffer): the window follows.
        guest("mode", 200, 150, "RGB565", 5)
        frame = current_frame(world, 21)
        run_until(viewer, lambda: viewer.shown_frame == frame, "the new mode")
        assert viewer.window.get_size() == (200, 150)
        assert np.array_equal(shown(viewer), expected_rgb(fourcc.RGB565, 200, 150, 5))

        # The guest goes away: the window says so, and shows it again when it is back.
        guest.process.kill()
        run_until(viewer, lambda: viewer.state == "disconnected", "disconnected")
        assert "disconnected" in pygame.display.get_caption()[0]
        assert world.host.wait_released(21, rigs.PATIENCE)
        # As `xl destroy` then `xl create`: once the backend let go, the guest's directories
        # go, and a new guest 21 boots with the same devices.
        backends = ("/local/domain/0/backend/vdispl/21/0", "/local/domain/0/backend/vkbd/21/0")
        rigs.wait_until(
            lambda: all(world.xs.read(f"{path}/state") in (b"2", b"6") for path in backends),
            "the backend to let go of guest 21",
        )
        for path in (*backends, "/libxl/21", "/local/domain/21"):
            world.xs.rm(path)
        world.add_guest(21)
        run_until(viewer, lambda: viewer.state == "live", "the guest back")
        run_until(viewer, lambda: viewer.shown_frame == current_frame(world, 21), "its frame")
        assert viewer.window.get_size() == (WIDTH, HEIGHT)
        assert np.array_equal(shown(viewer), expected_rgb(fourcc.XRGB8888, WIDTH, HEIGHT, 0))
    finally:
        viewer.close()


def test_unknown_connector_and_missing_backend_are_one_line_errors(
    world: World, tmp_path: Path
) -> None:
    guest = world.add_guest(22)
    with pytest.raises(
        ViewerError, match=r"^domain 22 device 0 has no connector 'side'; has 0 \(dom22\)$"
    ):
        Viewer(world.planes_socket, guest.domid, "side")
    runner = CliRunner()
    result = runner.invoke(main, ["view", "22", "3", "--planes-socket", world.planes_socket])
    assert result.exit_code == 1
    assert result.output == "Error: domain 22 device 0 has no connector '3'; has 0 (dom22)\n"
    missing = f"{tmp_path}/planes"
    result = runner.invoke(main, ["view", "22", "0", "--planes-socket", missing])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: no display backend at {missing} (")
    assert result.output.count("\n") == 1


def test_without_a_display_the_window_is_refused_rather_than_run_unseen(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = world.add_guest(23)
    # As on a box with no display and no SDL_VIDEODRIVER: SDL falls back to a driver that
    # draws nowhere.
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    refusal = r"no display to open a window on \(SDL fell back to its '(offscreen|dummy)' driver"
    with pytest.raises(ViewerError, match=f"^{refusal}"):
        Viewer(world.planes_socket, guest.domid, "0")
    # The command ends at once with that one line (before the fix it ran forever); SDL's
    # own probing may have printed to stderr before it.
    command = ["view", "23", "0", "--planes-socket", world.planes_socket]
    result = subprocess.run(
        [sys.executable, "-c", "from pvdisplay.cli import main; main()", *command],
        capture_output=True,
        text=True,
        timeout=rigs.PATIENCE,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("Error:") == 1
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(f"Error: {refusal}.*SDL_VIDEODRIVER=\\w+ to run without one", last)
    # Asked for explicitly, the invisible driver is the user's choice (as in these tests).
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    Viewer(world.planes_socket, guest.domid, "0").close()
