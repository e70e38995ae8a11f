"""Input end to end through the emulated host: config `vkb` -> XenStore -> backend -> guest.

The host is configured from TOML with vkb devices (as `pvdisplay demo` is). An output's
click and two-finger touch, sent with `PlaneClient.send_input`, must come back as pixels
the demo guest drew (read with `pvdisplay.outputs.snapshot.take`); a guest's `Keyboard` must
keep receiving input across a backend restart.
"""

import errno
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import pytest

import rigs
from pvdisplay import toolstack
from pvdisplay.guests import demo
from pvdisplay.outputs import snapshot
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.input_events import InputEvent, Key, PointerMove, TouchDown, TouchUp
from pvdisplay.planes.model import PlaneKey
from pvdisplay.toolstack.host import EmulatedHost
from pvdisplay.wire import kbdif
from rigs import PATIENCE, wait_until

pytestmark = pytest.mark.processes

BTN_LEFT = 0x110
KEY_A = 30
RED, GREEN = (255, 0, 0), (0, 255, 0)

CONFIG = """
[[guest]]
name = "painter"
vdispl = ["connectors=screen:320x240"]
vkb = ["unique-id=screen,feature-abs-pointer=1,feature-multi-touch=1"]

[[guest]]
name = "typist"
vdispl = ["connectors=desk:200x100"]
# As xl.cfg needs it for a backend in dom0: libxl puts it under backend/vinput.
vkb = ["backend-type=linux,unique-id=desk,feature-abs-pointer=1,feature-multi-touch=1"]

[[guest]]
name = "twin"
vdispl = ["connectors=left:320x240;right:320x240"]
vkb = ["unique-id=left,feature-abs-pointer=1,feature-multi-touch=1",
       "unique-id=right,feature-abs-pointer=1,feature-multi-touch=1"]

[[guest]]
name = "mouse"
vdispl = ["connectors=pad:320x240"]
vkb = ["unique-id=pad"]

[[guest]]
name = "loose"
vdispl = ["connectors=screen:320x240"]
vkb = ["feature-abs-pointer=1,feature-multi-touch=1"]
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedHost]:
    config = toolstack.parse_config(CONFIG)
    with rigs.emulated_host(config, tmp_path_factory.mktemp("host")) as emulated:
        yield emulated


def guest_config(host: EmulatedHost, name: str) -> toolstack.Guest:
    (guest,) = [g for g in host.config.guests if g.name == name]
    return guest


def send_when_connected(host: EmulatedHost, key: PlaneKey, events: Sequence[InputEvent]) -> None:
    """Send once the vkb bound to `key` is connected (ENOENT, or no socket, until then)."""

    def sent() -> bool:
        try:
            with PlaneClient(host.planes_socket) as client:
                client.send_input(key, events)
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise
            return False
        return True

    wait_until(sent, f"an input device bound to {key}")


def screen(host: EmulatedHost, domid: int, connector: int = 0) -> npt.NDArray[np.uint8] | None:
    try:
        with PlaneClient(host.planes_socket) as client:
            return snapshot.take(client, domid, connector).rgb
    except OSError:
        return None


def wait_for_picture(
    host: EmulatedHost,
    domid: int,
    check: Callable[[npt.NDArray[np.uint8]], bool],
    what: str,
    connector: int = 0,
) -> npt.NDArray[np.uint8]:
    shots: list[npt.NDArray[np.uint8]] = []

    def shown() -> bool:
        rgb = screen(host, domid, connector)
        if rgb is None:
            return False
        shots[:] = [rgb]
        return check(rgb)

    wait_until(shown, what)
    return shots[0]


def colour(rgb: npt.NDArray[np.uint8], x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in rgb[y, x])


def test_demo_guest_draws_the_click_and_both_fingers_where_they_were_sent(
    host: EmulatedHost,
) -> None:
    running = host.start_guest(guest_config(host, "painter"), demo.__name__ + ":run")
    key = PlaneKey(running.domid, 0, 0)
    send_when_connected(
        host, key, [PointerMove(100, 60), Key(BTN_LEFT, True), Key(BTN_LEFT, False)]
    )
    arm = demo.CROSSHAIR_ARM
    rgb = wait_for_picture(
        host, running.domid, lambda rgb: colour(rgb, 100, 60) == RED, "the crosshair"
    )
    for x, y in ((100 - arm, 60), (100 + arm, 60), (100, 60 - arm), (100, 60 + arm)):
        assert colour(rgb, x, y) == RED, (x, y)
    for x, y in ((100 + arm + 1, 58), (100 + arm + 1, 62), (98 - arm, 60), (100, 62 + arm)):
        assert colour(rgb, x, y) != RED, (x, y)

    with PlaneClient(host.planes_socket) as client:
        client.send_input(key, [TouchDown(5, 200, 150), TouchDown(9, 40, 200)])
    radius = demo.TOUCH_RADIUS

    def both_fingers(rgb: npt.NDArray[np.uint8]) -> bool:
        return colour(rgb, 200, 150) == GREEN and colour(rgb, 40, 200) == GREEN

    rgb = wait_for_picture(host, running.domid, both_fingers, "two touch dots")
    for cx, cy in ((200, 150), (40, 200)):
        for x, y in ((cx + radius, cy), (cx - radius, cy), (cx, cy + radius), (cx, cy - radius)):
            assert colour(rgb, x, y) == GREEN, (x, y)
        assert colour(rgb, cx + radius, cy + radius) != GREEN, "a dot, not a square"
    assert colour(rgb, 100, 60) == RED, "the pointer stays where it was"

    with PlaneClient(host.planes_socket) as client:
        client.send_input(key, [TouchUp(5)])
    wait_for_picture(
        host,
        running.domid,
        lambda rgb: colour(rgb, 200, 150) != GREEN and colour(rgb, 40, 200) == GREEN,
        "the lifted finger's dot to go",
    )
    running.process.kill()
    host.wait_guest_destroyed(running.domid, PATIENCE)
    assert not host.xs.exists(f"/local/domain/0/backend/vkbd/{running.domid}")


def test_demo_label_shows_the_last_key_pressed() -> None:
    def label(overlay: demo.InputOverlay) -> npt.NDArray[np.uint8]:
        pixels = np.zeros((100, 200 * 4), np.uint8)
        demo.TestCard(200, 100, "t", overlay).draw(0, pixels)
        return pixels[: demo.LABEL_HEIGHT].copy()

    overlay = demo.InputOverlay()
    before = label(overlay)
    overlay.apply(kbdif.Key(pressed=True, keycode=KEY_A))
    after = label(overlay)
    overlay.apply(kbdif.Key(pressed=False, keycode=KEY_A))
    assert overlay.last_key == KEY_A
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(label(overlay), after)


def test_keyboard_reconnects_after_a_backend_restart(host: EmulatedHost) -> None:
    running = host.start_guest(guest_config(host, "typist"), "input_agents:host_guest")
    guest = rigs.Guest(running.process)
    guest.wait_ready()
    send_when_connected(host, guest.key, [Key(KEY_A, True)])
    assert guest("read", 1) == [("Key", True, KEY_A)]
    assert guest("connections") == 1

    host.restart_backend()
    send_when_connected(host, guest.key, [PointerMove(20, 30), Key(KEY_A, False)])
    assert guest("read", 2) == [("Position", 20, 30, 0), ("Key", False, KEY_A)]
    assert guest("connections") == 2
    assert guest("info")["abs_pointer"]
    running.process.kill()
    host.wait_guest_destroyed(running.domid, PATIENCE)


def test_input_for_one_connector_reaches_only_the_vkb_bound_to_it(host: EmulatedHost) -> None:
    running = host.start_guest(guest_config(host, "twin"), demo.__name__ + ":run")
    right = PlaneKey(running.domid, 0, 1)
    send_when_connected(host, right, [PointerMove(150, 100), TouchDown(0, 200, 150)])
    wait_for_picture(
        host,
        running.domid,
        lambda rgb: colour(rgb, 150, 100) == RED and colour(rgb, 200, 150) == GREEN,
        "the crosshair and the dot on the right connector",
        connector=1,
    )
    left = screen(host, running.domid, 0)
    assert left is not None
    assert colour(left, 150, 100) != RED and colour(left, 200, 150) != GREEN
    running.process.kill()
    host.wait_guest_destroyed(running.domid, PATIENCE)


def test_a_vkb_without_unique_id_probes_the_first_connectors_sizes(host: EmulatedHost) -> None:
    """The frontend reads every size as it probes: none may be missing or 0 then."""
    running = host.start_guest(guest_config(host, "loose"), "input_agents:host_guest")
    guest = rigs.Guest(running.process)
    guest.wait_ready()
    info = guest("info")
    assert (info["width"], info["height"], info["mt"]) == (320, 240, (320, 240, 10))
    send_when_connected(host, guest.key, [TouchDown(0, 300, 200)])
    assert guest("read", 2) == [("MtDown", 0, 300, 200), ("MtSyn", 0)]
    running.process.kill()
    host.wait_guest_destroyed(running.domid, PATIENCE)


def test_demo_guest_draws_a_relative_pointer_where_its_motion_adds_up_to(
    host: EmulatedHost,
) -> None:
    running = host.start_guest(guest_config(host, "mouse"), demo.__name__ + ":run")
    key = PlaneKey(running.domid, 0, 0)
    send_when_connected(host, key, [PointerMove(100, 60), PointerMove(130, 50)])
    wait_for_picture(
        host, running.domid, lambda rgb: colour(rgb, 130, 50) == RED, "the relative crosshair"
    )
    running.process.kill()
    host.wait_guest_destroyed(running.domid, PATIENCE)


def test_demo_relative_pointer_stays_inside_the_device() -> None:
    overlay = demo.InputOverlay(scale_pointer=(640, 480, 320, 240))
    overlay.apply(kbdif.Motion(0, 0, -1))
    assert overlay.pointer is None, "a wheel step alone shows no pointer"
    overlay.apply(kbdif.Motion(100, 60, 0))
    overlay.apply(kbdif.Motion(-300, 20, 0))
    assert overlay.pointer == (0, 40)
    overlay.apply(kbdif.Motion(5000, 5000, 0))
    assert overlay.pointer == (319, 239)
    overlay.apply(kbdif.Motion(-39, -479, 0))
    assert overlay.pointer == (300, 0)
