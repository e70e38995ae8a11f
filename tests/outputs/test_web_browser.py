"""The web viewer in Debian's Chromium (Playwright), against real guests and backends.

Two setups, both real processes: a guest showing a known pattern with a real keyboard
device (xenstored, broker, backend domain, guest domain, as the input tests build them),
and the emulated host running the demo guests (`EmulatedHost`). The test run also takes
the README's screenshots: docs/screenshots/web-index.png and web-connector.png.
"""

import base64
import contextlib
import io
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright import sync_api as playwright

import rigs
from pvdisplay import toolstack
from pvdisplay.guests.pattern import expected_rgb
from pvdisplay.outputs import snapshot
from pvdisplay.outputs.web.server import BackgroundViewer
from pvdisplay.outputs.web.tiles import LOSSLESS
from pvdisplay.planes.client import PlaneClient
from pvdisplay.toolstack import host as emulated
from pvdisplay.wire import fourcc

pytestmark = [pytest.mark.processes, pytest.mark.browser]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WAIT_MS = 60_000
BTN_LEFT, KEY_A = 0x110, 30
WIDTH, HEIGHT = 320, 240
FULL_VKB = "backend=0,feature-abs-pointer=1,feature-multi-touch=1,multi-touch-num-contacts=4"


def need_chromium() -> None:
    if not rigs.CHROMIUM.exists():
        pytest.fail(f"install chromium for {rigs.CHROMIUM} (make test installs it with apt)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_chromium()
    profile = tempfile.mkdtemp(prefix="pvd-chromium-")
    with playwright.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile,
            executable_path=str(rigs.CHROMIUM),
            args=rigs.CHROMIUM_ARGS,
            headless=True,
            has_touch=True,
            viewport={"width": 1000, "height": 640},
        )
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


# -- a pattern guest with a real keyboard ---------------------------------------------------


class World(rigs.Rig):
    def add_guest(self, domid: int) -> rigs.Guest:
        return self.start_guest(
            "web_agents:guest", vkb=FULL_VKB, resolution=f"{WIDTH}x{HEIGHT}", domid=domid
        )


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with rigs.backend_world(World) as running:
        yield running


def canvas_rgb(page: Any) -> np.ndarray:
    url = page.evaluate("document.getElementById('screen').toDataURL('image/png')")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGB"))


def wait_live(page: Any, frames: int = 1) -> None:
    page.wait_for_function(
        f"window.pvdisplay && pvdisplay.state === 'live' && pvdisplay.frames >= {frames}",
        timeout=WAIT_MS,
    )


def to_page(page: Any, x: int, y: int) -> tuple[float, float]:
    """Where on the page guest pixel (x, y) is drawn (its centre), whatever the scale."""
    box = page.evaluate(
        "(() => { const r = document.getElementById('screen').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    scale_x, scale_y = box[2] / WIDTH, box[3] / HEIGHT
    return box[0] + (x + 0.5) * scale_x, box[1] + (y + 0.5) * scale_y


def test_canvas_shows_the_guest_exactly_and_input_arrives_at_guest_pixels(
    world: World, browser: Any, tmp_path: Path
) -> None:
    guest = world.add_guest(11)
    viewer = BackgroundViewer(world.planes_socket, port=0, quality=LOSSLESS)
    page = browser.new_page()
    try:
        page.goto(f"{viewer.url}view/{guest.domid}/0/0")
        wait_live(page)
        # The picture: exactly the guest's pattern, and exactly `pvdisplay snapshot`'s PNG.
        with PlaneClient(world.planes_socket) as client:
            snapshot.save_png(snapshot.take(client, guest.domid, 0), tmp_path / "snap.png")
        with Image.open(tmp_path / "snap.png") as png:
            snap = np.asarray(png)
        shown = canvas_rgb(page)
        assert np.array_equal(shown, expected_rgb(fourcc.XRGB8888, WIDTH, HEIGHT, 0))
        assert np.array_equal(shown, snap)

        # Shown at 2.5x: page coordinates must still land on guest pixels.
        page.evaluate(
            "(() => { const c = document.getElementById('screen');"
            " c.style.maxWidth = 'none'; c.style.maxHeight = 'none';"
            f" c.style.width = '{WIDTH * 5 // 2}px'; c.style.height = '{HEIGHT * 5 // 2}px'; }})()"
        )
        page.mouse.click(*to_page(page, 100, 50))
        clicked = guest.read_until(("Key", False, BTN_LEFT))
        press = clicked.index(("Key", True, BTN_LEFT))
        assert [e for e in clicked[:press] if e[0] == "Position"][-1] == ("Position", 100, 50, 0)

        page.mouse.wheel(0, -100)  # one notch away from the user
        assert guest.read_until(("Position", 100, 50, -1))[-1] == ("Position", 100, 50, -1)

        page.keyboard.press("KeyA")
        assert guest.read_until(("Key", False, KEY_A))[-2:] == [
            ("Key", True, KEY_A),
            ("Key", False, KEY_A),
        ]

        # Two fingers down, one moves, both lift (CDP touch events become Pointer Events).
        first, second, moved = (
            to_page(page, 40, 30),
            to_page(page, 200, 150),
            to_page(page, 210, 160),
        )
        cdp = browser.new_cdp_session(page)

        def touch(kind: str, *points: tuple[int, tuple[float, float]]) -> None:
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": kind, "touchPoints": [{"x": p[0], "y": p[1], "id": i} for i, p in points]},
            )

        touch("touchStart", (0, first), (1, second))
        touch("touchMove", (0, first), (1, moved))
        touch("touchEnd")
        events = [e for e in guest.read_until(("MtUp", 1)) if e[0] != "MtSyn"]
        if ("MtUp", 0) not in events:
            events += [e for e in guest.read_until(("MtUp", 0)) if e[0] != "MtSyn"]
        assert events[:3] == [
            ("MtDown", 0, 40, 30),
            ("MtDown", 1, 200, 150),
            ("MtMotion", 1, 210, 160),
        ]
        assert sorted(events[3:]) == [("MtUp", 0), ("MtUp", 1)]

        # The guest goes away: the page says so.
        guest.process.kill()
        page.wait_for_function("pvdisplay.state === 'disconnected'", timeout=WAIT_MS)
        assert "guest disconnected" in page.inner_text("#overlay")
    finally:
        page.close()
        viewer.close()


def test_a_page_that_loses_focus_or_its_pointer_lets_go_of_what_it_held(
    world: World, browser: Any
) -> None:
    guest = world.add_guest(12)
    viewer = BackgroundViewer(world.planes_socket, port=0)
    page = browser.new_page()
    try:
        page.goto(f"{viewer.url}view/{guest.domid}/0/0")
        wait_live(page)
        page.mouse.move(*to_page(page, 30, 40))
        page.mouse.down()
        page.keyboard.down("KeyA")
        guest.read_until(("Key", True, KEY_A))
        # Keys lifted while the page has no focus never reach it: it lets go at once.
        page.evaluate("document.getElementById('screen').blur()")
        assert guest.read_until(("Key", False, BTN_LEFT)) == [
            ("Key", False, KEY_A),
            ("Key", False, BTN_LEFT),
        ]
        # A cancelled mouse pointer names no button (-1): the page lifts those it pressed.
        page.mouse.up()
        page.mouse.down()
        guest.read_until(("Key", True, BTN_LEFT))
        page.evaluate(
            "document.getElementById('screen').dispatchEvent("
            "new PointerEvent('pointercancel', {pointerType: 'mouse', button: -1}))"
        )
        assert guest.read_until(("Key", False, BTN_LEFT))[-1] == ("Key", False, BTN_LEFT)
    finally:
        page.close()
        viewer.close()


# -- the demo host: index, screenshots, backend restart -----------------------------------------


def test_index_lists_every_connector_live_and_viewer_resumes_after_backend_restart(
    browser: Any,
) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="pvw-demo-", dir="/tmp"))
    config_ = toolstack.parse_config(emulated.DEMO_CONFIG)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
        demo = stack.enter_context(emulated.EmulatedHost(config_, run_dir))
        viewer = BackgroundViewer(
            demo.planes_socket, port=0, xenstore_socket=demo.xenstore_dir / "socket_ro"
        )
        stack.callback(viewer.close)
        page = browser.new_page()
        stack.callback(page.close)

        page.goto(viewer.url)
        expected = {
            f"{running.domid}/{device.devid}/{index}": running.guest.name
            for running in demo.guests.values()
            for device in running.devices
            for index in range(len(device.connectors))
        }
        page.wait_for_function(
            "(keys) => keys.every((k) => {"
            " const row = document.querySelector(`tr[data-key='${k}']`);"
            " return row && row.children[9].textContent === 'live'"
            " && parseFloat(row.children[7].textContent) > 0; })",
            arg=sorted(expected),
            timeout=WAIT_MS,
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "web-index.png"))
        rows = page.eval_on_selector_all(
            "#planes tr",
            "rows => rows.map(r => [r.dataset.key, ...[...r.children].map(c => c.textContent)])",
        )
        # Each row names its domain as XenStore does (/local/domain/N/name).
        assert {row[0]: row[2] for row in rows} == expected
        left = next(row[1:] for row in rows if row[5] == "left")
        assert left[1] == "alpha"
        assert left[5:7] == ["640\N{MULTIPLICATION SIGN}480", "XR24"]

        domid = next(r.domid for r in demo.guests.values() if r.guest.name == "alpha")
        page.goto(f"{viewer.url}view/{domid}/0/0")
        wait_live(page, frames=10)
        page.screenshot(path=str(SCREENSHOTS / "web-connector.png"))
        shown = canvas_rgb(page)
        assert shown.shape == (480, 640, 3) and len(np.unique(shown.reshape(-1, 3), axis=0)) > 2

        # The backend dies and comes back: the page says so, then frames flow again.
        page.evaluate("window.seen = []; setInterval(() => seen.push(pvdisplay.state), 5)")
        before = page.evaluate("pvdisplay.frames")
        demo.restart_backend()
        page.wait_for_function("seen.includes('disconnected')", timeout=WAIT_MS)
        page.wait_for_function(
            f"pvdisplay.state === 'live' && pvdisplay.frames > {before + 10}", timeout=WAIT_MS
        )
        assert math.isfinite(page.evaluate("pvdisplay.latencies.at(-1)"))
