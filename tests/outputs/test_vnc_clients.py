"""The VNC server with real clients against real guests (xenstored, broker, backend, guest).

- vncdotool (RFB 3.8, VNC authentication): captures the screen, which must equal the
  guest's pattern pixel for pixel, and sends a click and a key the guest's kbdif gets.
- vncsnapshot (RFB 3.3, security None, Raw): its JPEG must show the pattern.
- TigerVNC's viewer under Xvfb (RFB 3.8, VNC authentication with a vncpasswd file,
  ZRLE, which the server's log must show it chose): the root window, captured with xwd,
  must contain the pattern exactly.
- A guest changing mode: vncdotool sees the new size (DesktopSize) and picture.
"""

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from pvdisplay.guests import pattern
from pvdisplay.outputs.vnc import des
from pvdisplay.wire import fourcc
from rigs import PATIENCE, Guest
from vnc_guest import ServerThread, World, world

PASSWORD = "sesame"
VNCDO = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vncdo"
# vncpasswd files hold the password DES-encrypted under this fixed key (vncauth.c).
VNCPASSWD_KEY = bytes([23, 82, 107, 6, 35, 78, 88, 7])
BTN_LEFT = 0x110
KEY_A = 30

pytestmark = [pytest.mark.processes, pytest.mark.timeout(180)]


def need(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.fail(f"install {' '.join(missing)} (make test installs them with apt)")


@pytest.fixture(scope="module")
def host() -> Iterator[World]:
    with world() as emulated:
        yield emulated


@pytest.fixture(scope="module")
def guest(host: World) -> Guest:
    return host.add_guest("320x240", "XRGB8888", seed=5)


@pytest.fixture(scope="module")
def servers(host: World) -> Iterator[tuple[ServerThread, ServerThread]]:
    """One server with a password, one without."""
    locked, open_ = ServerThread(host.planes_socket, PASSWORD), ServerThread(host.planes_socket)
    try:
        yield locked, open_
    finally:
        locked.close()
        open_.close()


def vncdo(port: int, *commands: str) -> None:
    result = subprocess.run(
        [str(VNCDO), "-s", f"127.0.0.1::{port}", "-p", PASSWORD, *commands],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def rgb(path: Path) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(path).convert("RGB"))


def test_vncdotool_captures_the_exact_pattern_after_vnc_authentication(
    servers: tuple[ServerThread, ServerThread], guest: Guest, tmp_path: Path
) -> None:
    locked, _ = servers
    port = locked.port(guest.key)
    vncdo(port, "capture", str(tmp_path / "shot.png"))
    expected = pattern.expected_rgb(fourcc.XRGB8888, 320, 240, 5)
    np.testing.assert_array_equal(rgb(tmp_path / "shot.png"), expected)


def test_vncdotool_click_and_key_arrive_in_the_guest(
    servers: tuple[ServerThread, ServerThread], guest: Guest
) -> None:
    locked, _ = servers
    vncdo(locked.port(guest.key), "move", "10", "20", "click", "1", "key", "a")
    assert guest("read", 5) == [
        ("Position", 10, 20, 0),
        ("Key", True, BTN_LEFT),
        ("Key", False, BTN_LEFT),
        ("Key", True, KEY_A),
        ("Key", False, KEY_A),
    ]


def test_a_wrong_password_is_refused(
    servers: tuple[ServerThread, ServerThread], guest: Guest, tmp_path: Path
) -> None:
    locked, _ = servers
    result = subprocess.run(
        [
            str(VNCDO),
            "-s",
            f"127.0.0.1::{locked.port(guest.key)}",
            "-p",
            "wrong",
            "capture",
            str(tmp_path / "never.png"),
        ],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert result.returncode != 0
    assert not (tmp_path / "never.png").exists()


def test_vncsnapshot_speaks_3_3_and_gets_the_pattern(
    host: World,
    servers: tuple[ServerThread, ServerThread],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    need("vncsnapshot")
    guest = host.add_guest("256x192", "RGB565", seed=9)
    _, open_ = servers
    caplog.set_level(logging.INFO, logger="pvdisplay.outputs.vnc.server")
    output = tmp_path / "snap.jpg"
    result = subprocess.run(
        ["vncsnapshot", "-quality", "100", f"127.0.0.1::{open_.port(guest.key)}", str(output)],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shot = rgb(output).astype(np.int16)
    expected = pattern.expected_rgb(fourcc.RGB565, 256, 192, 9).astype(np.int16)
    assert shot.shape == expected.shape
    # JPEG even at quality 100 is lossy on noise: close on average, not exact.
    assert np.abs(shot - expected).mean() < 6
    versions = [
        r.__dict__["fields"].get("version") for r in caplog.records if "fields" in r.__dict__
    ]
    assert "3.3" in versions


def vncpasswd_file(path: Path, password: str) -> None:
    key = des.vnc_key("".join(map(chr, VNCPASSWD_KEY)))
    path.write_bytes(des.encrypt_block(key, password.encode().ljust(8, b"\0")))


def find(screen: npt.NDArray[np.uint8], picture: npt.NDArray[np.uint8]) -> bool:
    """Whether `picture` appears in `screen` exactly (bottom rows, away from overlays)."""
    height, width = picture.shape[:2]
    band = picture[height // 2 :]
    for y, x in zip(*np.nonzero((screen[..., :] == band[0, 0]).all(axis=2)), strict=True):
        window = screen[y : y + band.shape[0], x : x + width]
        if window.shape == band.shape and (window == band).all():
            return True
    return False


def test_tigervnc_viewer_shows_the_frame_under_xvfb_over_zrle(
    servers: tuple[ServerThread, ServerThread],
    guest: Guest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    need("Xvfb", "xvncviewer", "xwd", "convert")
    locked, _ = servers
    caplog.set_level(logging.INFO, logger="pvdisplay.outputs.vnc.server")
    vncpasswd_file(tmp_path / "passwd", PASSWORD)
    display = f":{90 + os.getpid() % 100}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"])
    env = dict(os.environ, DISPLAY=display)
    viewer = None
    try:
        expected = pattern.expected_rgb(fourcc.XRGB8888, 320, 240, 5)
        deadline = time.monotonic() + PATIENCE
        shown = False
        while not shown and time.monotonic() < deadline:
            if viewer is None or viewer.poll() is not None:
                viewer = subprocess.Popen(
                    [
                        "xvncviewer",
                        "-passwd",
                        str(tmp_path / "passwd"),
                        "-PreferredEncoding",
                        "ZRLE",
                        f"127.0.0.1::{locked.port(guest.key)}",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            time.sleep(0.5)
            capture = subprocess.run(
                f"xwd -root -silent -display {display} | convert xwd:- {tmp_path / 'root.png'}",
                shell=True,
                check=False,
            )
            shown = capture.returncode == 0 and find(rgb(tmp_path / "root.png"), expected)
        assert shown, "the viewer never showed the guest's picture"
        # Every pixel rectangle goes in the encoding the server logged for the client.
        chosen = [
            r.__dict__["fields"]["encoding"]
            for r in caplog.records
            if r.getMessage() == "vnc client encodings"
            and r.__dict__["fields"]["plane"] == guest.key
        ]
        assert chosen and set(chosen) == {"ZRLE"}
    finally:
        if viewer is not None:
            viewer.terminate()
            viewer.wait(PATIENCE)
        xvfb.terminate()
        xvfb.wait(PATIENCE)


def test_a_mode_change_reaches_a_connected_client_as_desktop_size(
    host: World, servers: tuple[ServerThread, ServerThread], tmp_path: Path
) -> None:
    guest = host.add_guest("320x240", "XRGB8888", seed=1)
    locked, _ = servers
    before, after = tmp_path / "before.png", tmp_path / "after.png"
    # One connection across the change: the client must learn the size from DesktopSize.
    client = subprocess.Popen(
        [
            str(VNCDO),
            "-s",
            f"127.0.0.1::{locked.port(guest.key)}",
            "-p",
            PASSWORD,
            "capture",
            str(before),
            "pause",
            "3",
            "capture",
            str(after),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + PATIENCE
        while not before.exists() and client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        guest("mode", 200, 120, "ARGB1555", 3)
        _, errors = client.communicate(timeout=PATIENCE)
    finally:
        client.kill()
    assert client.returncode == 0, errors
    np.testing.assert_array_equal(rgb(before), pattern.expected_rgb(fourcc.XRGB8888, 320, 240, 1))
    np.testing.assert_array_equal(rgb(after), pattern.expected_rgb(fourcc.ARGB1555, 200, 120, 3))
