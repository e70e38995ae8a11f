"""The web viewer in Debian's Chromium (Playwright), against real guests and backends.

Two setups, both real processes: a guest showing a known pattern with a real keyboard
device (xenstored, broker, backend domain, guest domain, as the input tests build them),
and the emulated host running the demo guests (`EmulatedHost`). The test run also takes
the README's screenshots in docs/screenshots/: web-index.png (thumbnails), web-wall.png,
web-connector.png (desktop) and web-phone.png.
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
from pvdisplay.outputs import picture_file, snapshot
from pvdisplay.outputs.web.server import BackgroundViewer
from pvdisplay.outputs.web.tiles import LOSSLESS
from pvdisplay.planes.client import PlaneClient
from pvdisplay.toolstack import host as emulated
from pvdisplay.wire import fourcc

pytestmark = [pytest.mark.processes, pytest.mark.browser]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WAIT_MS = 60_000
BTN_LEFT, KEY_A = 0x110, 30
KEY_ESC, KEY_TAB, KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE = 1, 15, 29, 56, 111
KEY_LEFTSHIFT, KEY_H, KEY_I, KEY_C, KEY_1 = 42, 35, 23, 46, 2
PHONE = {"width": 390, "height": 844}
WIDTH, HEIGHT = 320, 240
FULL_VKB = "backend=0,feature-abs-pointer=1,feature-multi-touch=1,multi-touch-num-contacts=4"


def need_chromium() -> None:
    if not rigs.CHROMIUM.exists():
        pytest.fail(f"install chromium for {rigs.CHROMIUM} (make test installs it with apt)")


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    need_chromium()
    with playwright.sync_playwright() as running:
        yield running


@contextlib.contextmanager
def chromium(driver: Any, **options: Any) -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="pvd-chromium-")
    try:
        context = driver.chromium.launch_persistent_context(
            profile,
            executable_path=str(rigs.CHROMIUM),
            args=rigs.CHROMIUM_ARGS,
            headless=True,
            has_touch=True,
            **options,
        )
        try:
            yield context
        finally:
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(driver: Any) -> Iterator[Any]:
    with chromium(driver, viewport={"width": 1000, "height": 640}) as context:
        yield context


@pytest.fixture(scope="module")
def phone(driver: Any) -> Iterator[Any]:
    """Chromium as a phone: a 390 px wide touch screen that honours `<meta name=viewport>`."""
    with chromium(driver, viewport=PHONE, is_mobile=True, device_scale_factor=2) as context:
        yield context


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


@contextlib.contextmanager
def connector_page(world: World, domid: int, browser: Any, **viewer: Any) -> Iterator[Any]:
    """A page of `browser` showing connector 0 of `domid` live, served by a web viewer
    (options `viewer`) of its own."""
    server = BackgroundViewer(world.planes_socket, port=0, **viewer)
    page = browser.new_page()
    try:
        page.goto(f"{server.url}view/{domid}/0/0")
        wait_live(page)
        yield page
    finally:
        page.close()
        server.close()


def to_page(page: Any, x: int, y: int) -> tuple[float, float]:
    """Where on the page guest pixel (x, y) is drawn (its centre), whatever the scale."""
    box = page.evaluate(
        "(() => { const r = document.getElementById('screen').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    scale_x, scale_y = box[2] / WIDTH, box[3] / HEIGHT
    return box[0] + (x + 0.5) * scale_x, box[1] + (y + 0.5) * scale_y


def canvas_css_size(page: Any) -> tuple[float, float]:
    box = page.evaluate(
        "(() => { const r = document.getElementById('screen').getBoundingClientRect();"
        " return [r.width, r.height]; })()"
    )
    return box[0], box[1]


def area_size(page: Any) -> tuple[float, float]:
    box = page.evaluate("[area.clientWidth, area.clientHeight]")
    return box[0], box[1]


def test_canvas_shows_the_guest_exactly_and_input_arrives_at_guest_pixels(
    world: World, browser: Any, tmp_path: Path
) -> None:
    guest = world.add_guest(11)
    with connector_page(world, guest.domid, browser, quality=LOSSLESS) as page:
        # The picture: exactly the guest's pattern, and exactly `pvdisplay snapshot`'s PNG.
        with PlaneClient(world.planes_socket) as client:
            picture_file.save(snapshot.take(client, guest.domid, 0).rgb, tmp_path / "snap.png")
        with Image.open(tmp_path / "snap.png") as png:
            snap = np.asarray(png)
        shown = canvas_rgb(page)
        assert np.array_equal(shown, expected_rgb(fourcc.XRGB8888, WIDTH, HEIGHT, 0))
        assert np.array_equal(shown, snap)

        # Fitted to the page (about 2.2x): page coordinates must still land on guest pixels.
        page.click("[data-scale=fit]")
        assert canvas_css_size(page)[0] > 2 * WIDTH
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


def test_a_page_that_loses_focus_or_its_pointer_lets_go_of_what_it_held(
    world: World, browser: Any
) -> None:
    guest = world.add_guest(12)
    with connector_page(world, guest.domid, browser) as page:
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


def keys_of(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [event for event in events if event[0] == "Key"]


def read_keys(guest: rigs.Guest, count: int) -> list[tuple[Any, ...]]:
    """The next `count` key events the guest receives."""
    keys: list[tuple[Any, ...]] = []
    while len(keys) < count:
        keys += keys_of([tuple(event) for event in guest("read", 1)])
    return keys


def test_focus_is_shown_and_the_toolbar_sends_keys_a_browser_keeps(
    world: World, browser: Any
) -> None:
    guest = world.add_guest(13)
    with connector_page(world, guest.domid, browser) as page:
        assert page.inner_text("#focus") == "click to control"
        page.mouse.click(*to_page(page, 10, 10))
        assert page.inner_text("#focus").startswith("controlling")
        guest.read_until(("Key", False, BTN_LEFT))

        # Escape on the keyboard lets go of the canvas and never reaches the guest...
        page.keyboard.press("Escape")
        page.wait_for_function(
            "document.getElementById('focus').textContent === 'click to control'"
        )
        # ...the toolbar's Esc does, as do Tab and Ctrl-Alt-Del, without taking the focus.
        page.mouse.click(*to_page(page, 10, 10))
        page.click("[data-key=Escape]")
        page.click("[data-key=Tab]")
        page.click("#ctrl-alt-del")
        assert page.inner_text("#focus").startswith("controlling")
        events = keys_of(guest.read_until(("Key", False, KEY_LEFTCTRL)))
        assert events[-10:] == [
            ("Key", True, KEY_ESC),
            ("Key", False, KEY_ESC),
            ("Key", True, KEY_TAB),
            ("Key", False, KEY_TAB),
            ("Key", True, KEY_LEFTCTRL),
            ("Key", True, KEY_LEFTALT),
            ("Key", True, KEY_DELETE),
            ("Key", False, KEY_DELETE),
            ("Key", False, KEY_LEFTALT),
            ("Key", False, KEY_LEFTCTRL),
        ]
        assert events.count(("Key", True, KEY_ESC)) == 1  # only the toolbar's

        # A held modifier stays down for the next key, then lets go.
        page.click("[data-sticky=ControlLeft]")
        assert page.get_attribute("[data-sticky=ControlLeft]", "aria-pressed") == "true"
        page.keyboard.press("KeyC")
        assert keys_of(guest.read_until(("Key", False, KEY_LEFTCTRL))) == [
            ("Key", True, KEY_LEFTCTRL),
            ("Key", True, KEY_C),
            ("Key", False, KEY_C),
            ("Key", False, KEY_LEFTCTRL),
        ]
        assert page.get_attribute("[data-sticky=ControlLeft]", "aria-pressed") == "false"

        # Focus elsewhere on the page: the label says so.
        page.evaluate("document.getElementById('screen').blur()")
        assert page.inner_text("#focus") == "click to control"


def test_on_a_phone_the_canvas_fills_the_width_touch_arrives_and_text_can_be_typed(
    world: World, phone: Any
) -> None:
    guest = world.add_guest(14)
    with connector_page(world, guest.domid, phone) as page:
        page.click("[data-scale=fit]")
        # Laid out at the phone's width (980 px without the viewport tag), canvas edge to edge.
        assert page.evaluate("document.documentElement.clientWidth") == PHONE["width"]
        width = page.evaluate("document.getElementById('screen').getBoundingClientRect().width")
        assert PHONE["width"] - 2 <= width <= PHONE["width"]

        page.touchscreen.tap(*to_page(page, 100, 80))
        events = [e for e in guest.read_until(("MtUp", 0)) if e[0] != "MtSyn"]
        assert events == [("MtDown", 0, 100, 80), ("MtUp", 0)]

        # The keyboard button opens the phone's keyboard on a hidden field; its text is sent.
        page.tap("#type")
        assert page.evaluate("document.activeElement.id") == "typing"
        assert page.inner_text("#focus").startswith("typing")
        page.keyboard.insert_text("Hi!")
        assert read_keys(guest, 10) == [
            ("Key", True, KEY_LEFTSHIFT),
            ("Key", True, KEY_H),
            ("Key", False, KEY_H),
            ("Key", False, KEY_LEFTSHIFT),
            ("Key", True, KEY_I),
            ("Key", False, KEY_I),
            ("Key", True, KEY_LEFTSHIFT),
            ("Key", True, KEY_1),
            ("Key", False, KEY_1),
            ("Key", False, KEY_LEFTSHIFT),
        ]
        assert page.input_value("#typing") == ""


# -- the demo host: index, screenshots, backend restart -----------------------------------------


THUMBNAIL_PIXELS = """async (key) => {
    const image = document.querySelector(`.card[data-key='${key}'] img`);
    await image.decode();
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    canvas.getContext("2d").drawImage(image, 0, 0);
    return [image.dataset.version, canvas.toDataURL()];
}"""


def backend_state_is(page: Any, text: str) -> None:
    page.wait_for_function(
        f"document.getElementById('backend').textContent === {text!r}", timeout=WAIT_MS
    )


def test_index_and_wall_say_there_is_no_backend_then_that_the_server_is_gone(
    browser: Any, tmp_path: Path
) -> None:
    viewer = BackgroundViewer(tmp_path / "no-backend.sock", port=0)
    page = browser.new_page()
    try:
        try:
            for path, listing in (("", "#planes"), ("wall", "#wall")):
                page.goto(f"{viewer.url}{path}")
                backend_state_is(page, "waiting for the display backend")
                assert page.get_attribute("#backend", "class") == "state disconnected"
                assert page.inner_text(listing) == "no guest display yet"
        finally:
            viewer.close()
        backend_state_is(page, "viewer server unreachable; retrying")
        assert page.get_attribute("#backend", "class") == "state disconnected"
    finally:
        page.close()


def test_demo_index_thumbnails_wall_and_connector_page_then_backend_restart(
    browser: Any, phone: Any
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
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

        # The index: a card per connector, live, with its guest's name and a thumbnail.
        page.goto(viewer.url)
        expected = {
            f"{running.domid}/{device.devid}/{index}": running.guest.name
            for running in demo.guests.values()
            for device in running.devices
            for index in range(len(device.connectors))
        }
        page.wait_for_function(
            "(keys) => keys.every((k) => {"
            " const card = document.querySelector(`.card[data-key='${k}']`);"
            " const field = (name) => card.querySelector(`[data-field=${name}]`).textContent;"
            " return card && field('state') === 'live' && parseFloat(field('fps')) > 0"
            " && card.querySelector('img').complete"
            " && card.querySelector('img').naturalWidth > 0; })",
            arg=sorted(expected),
            timeout=WAIT_MS,
        )
        page.screenshot(path=str(SCREENSHOTS / "web-index.png"))
        cards = page.eval_on_selector_all(
            ".card",
            "cards => cards.map(c => [c.dataset.key, c.querySelector('h2').textContent,"
            " Object.fromEntries([...c.querySelectorAll('dd')].map("
            "d => [d.dataset.field, d.textContent])),"
            " [c.querySelector('img').naturalWidth, c.querySelector('img').naturalHeight]])",
        )
        # Each card names its domain as XenStore does (/local/domain/N/name).
        assert {key: heading.split(" · ")[0] for key, heading, _, _ in cards} == expected
        left = next(fields for _, _, fields, _ in cards if fields["unique_id"] == "left")
        assert left["resolution"] == "640\N{MULTIPLICATION SIGN}480" and left["fourcc"] == "XR24"
        # Thumbnails are small: reduced by a whole factor to fit 320x200 (640x480 by 3, the
        # last partial column kept).
        sizes = {fields["unique_id"]: tuple(size) for _, _, fields, size in cards}
        assert sizes["left"] == (214, 160)
        assert all(100 <= w <= 320 and 100 <= h <= 200 for w, h in sizes.values())
        # The demo animates: every thumbnail is made again, and shows something new.
        first = {key: page.evaluate(THUMBNAIL_PIXELS, key) for key in expected}
        page.wait_for_function(
            "(versions) => Object.entries(versions).every(([k, v]) =>"
            " document.querySelector(`.card[data-key='${k}'] img`).dataset.version !== v)",
            arg={key: version for key, (version, _) in first.items()},
            timeout=WAIT_MS,
        )
        later = {key: page.evaluate(THUMBNAIL_PIXELS, key) for key in expected}
        assert all(later[key][1] != first[key][1] for key in expected)

        # The wall: every connector live at once.
        page.goto(f"{viewer.url}wall")
        all_drawing = (
            "(least) => window.pvdisplayWall && pvdisplayWall.size === least.count"
            " && [...pvdisplayWall.values()].every((t) => t.screen.stats.state === 'live'"
            " && t.screen.stats.frames > (least.frames[t.figure.dataset.key] || 0))"
        )
        page.wait_for_function(all_drawing, arg={"count": len(expected), "frames": {}})
        frames = page.evaluate(
            "Object.fromEntries([...pvdisplayWall].map(([k, t]) => [k, t.screen.stats.frames + 5]))"
        )
        page.wait_for_function(
            all_drawing, arg={"count": len(expected), "frames": frames}, timeout=WAIT_MS
        )
        assert page.locator("#wall canvas").count() == len(expected)
        page.screenshot(path=str(SCREENSHOTS / "web-wall.png"))

        # One connector: its guest's name, its own frame rate and latency, and scaling.
        domid = next(r.domid for r in demo.guests.values() if r.guest.name == "alpha")
        page.goto(f"{viewer.url}view/{domid}/0/0")
        wait_live(page, frames=10)
        assert page.inner_text("#title").startswith("alpha")
        page.wait_for_function(
            "/^[1-9][0-9]* fps · [0-9]+ ms$/.test(document.getElementById('rate').textContent)",
            timeout=WAIT_MS,
        )
        page.click("[data-scale=native]")
        assert canvas_css_size(page) == (640, 480)
        page.click("[data-scale=fill]")
        assert canvas_css_size(page) == area_size(page)
        page.click("[data-scale=fit]")
        width, height = canvas_css_size(page)
        room = area_size(page)
        assert abs(height - room[1]) <= 1 and width > 640  # scaled up to the area's height
        assert abs(width / height - 640 / 480) < 0.01
        page.screenshot(path=str(SCREENSHOTS / "web-connector.png"))
        shown = canvas_rgb(page)
        assert shown.shape == (480, 640, 3) and len(np.unique(shown.reshape(-1, 3), axis=0)) > 2

        page.click("#fullscreen")
        page.wait_for_function("document.fullscreenElement === area", timeout=WAIT_MS)
        page.wait_for_function(
            "Math.abs(document.getElementById('screen').getBoundingClientRect().height"
            f" - area.clientHeight) <= 1 && area.clientHeight > {room[1]}",
            timeout=WAIT_MS,
        )
        page.evaluate("document.exitFullscreen()")  # the toolbar is not in the full screen
        page.wait_for_function("document.fullscreenElement === null", timeout=WAIT_MS)

        # The same page on a phone.
        small = phone.new_page()
        stack.callback(small.close)
        small.goto(f"{viewer.url}view/{domid}/0/0")
        small.click("[data-scale=fit]")
        wait_live(small, frames=10)
        small.screenshot(path=str(SCREENSHOTS / "web-phone.png"))

        # The backend dies and comes back: the page says so, then frames flow again.
        page.evaluate("window.seen = []; setInterval(() => seen.push(pvdisplay.state), 5)")
        before = page.evaluate("pvdisplay.frames")
        demo.restart_backend()
        page.wait_for_function("seen.includes('disconnected')", timeout=WAIT_MS)
        page.wait_for_function(
            f"pvdisplay.state === 'live' && pvdisplay.frames > {before + 10}", timeout=WAIT_MS
        )
        assert math.isfinite(page.evaluate("pvdisplay.latencies.at(-1)"))
