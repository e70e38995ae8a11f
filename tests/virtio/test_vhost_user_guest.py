"""A real arm64 Linux guest's virtio_gpu driver against `pvdisplay vhost-user-gpu`.

QEMU 10 (TCG, virtio-mmio) keeps the transport; our back-end serves both virtqueues. The
guest's init writes a known pattern to /dev/fb0; the test checks it pixel for pixel on
both scanouts, through the planes socket (`pvdisplay snapshot`) and through QEMU's own
display (`screendump`, fed by the vhost-user-gpu display channel). Then the guest changes
the first scanout's mode itself through KMS (libdrm's modetest sets 1024x768, one of the
established modes our EDID lists): the planes, QEMU's display, the web viewer's listing
and a new VNC client all show the new mode; when modetest exits, the fbdev emulation's
mode and the pattern come back. Then QEMU goes away and comes back: the back-end serves
the new connection from scratch.

Needs the files `make test-guest` fetches into .cache/guest (skipped without them).
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

import guest_vm
from pvdisplay.outputs.web.server import BackgroundViewer
from pvdisplay.planes.model import PlaneKey
from rigs import PATIENCE
from vnc_guest import ServerThread

WIDTH, HEIGHT = 1280, 800
NEW_MODE = (1024, 768)
# modetest's "-F plain" fill writes 0x77 to every byte of the framebuffer.
PLAIN_FILL = 0x77
DOMID = 3
SETTLE_TIMEOUT = 30.0
PVDISPLAY = str(Path(sys.executable).parent / "pvdisplay")
VNCDO = str(Path(sys.executable).parent / "vncdo")
VNC_PASSWORD = "sesame"

pytestmark = [
    pytest.mark.processes,
    pytest.mark.qemu,
    pytest.mark.skipif(
        not guest_vm.FETCHED.exists(), reason="guest files missing: run `make test-guest`"
    ),
]


@pytest.fixture(scope="module")
def files() -> guest_vm.GuestFiles:
    return guest_vm.prepare(WIDTH, HEIGHT)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """`pvdisplay vhost-user-gpu` with two scanouts: (vhost-user socket, planes socket)."""
    vhost, planes = tmp_path / "vgpu.sock", tmp_path / "planes.sock"
    size = f"{WIDTH}x{HEIGHT}"
    process = subprocess.Popen(
        [PVDISPLAY, "--log-level", "warning", "vhost-user-gpu",
         "--socket-path", str(vhost), "--planes-socket", str(planes), "--domid", str(DOMID),
         "--scanout", size, "--scanout", size],
    )  # fmt: skip
    try:
        guest_vm.wait_for_socket(vhost, process)
        guest_vm.wait_for_socket(planes, process)
        yield vhost, planes
        assert process.poll() is None, "the back-end died"
    finally:
        process.terminate()
        process.wait(PATIENCE)


def settles(read: Callable[[], npt.NDArray[np.uint8]], expected: npt.NDArray[np.uint8]) -> None:
    """`read()` shows `expected` exactly once the last update has landed."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        picture = read()
        if picture.shape == expected.shape and np.array_equal(picture, expected):
            return
        if time.monotonic() > deadline:
            wrong = (
                "a different size"
                if picture.shape != expected.shape
                else f"{int(np.any(picture != expected, axis=2).sum())} wrong pixels"
            )
            pytest.fail(f"picture {picture.shape} vs {expected.shape}: {wrong}")
        time.sleep(0.1)


def snapshot(planes: Path, connector: int, out: Path) -> npt.NDArray[np.uint8]:
    result = subprocess.run(
        [PVDISPLAY, "snapshot", "--planes-socket", str(planes),
         str(DOMID), str(connector), "-o", str(out)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        return np.zeros((0, 0, 3), np.uint8)
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB"))


def boot_and_check(
    files: guest_vm.GuestFiles, workdir: Path, vhost: Path, planes: Path, *, change_mode: bool
) -> None:
    expected = files.expected_rgb()
    with guest_vm.Qemu(files, workdir, vhost, outputs=2) as guest:
        assert guest.wait_for("PVD fb") == f"PVD fb size={WIDTH},{HEIGHT} stride={WIDTH * 4} bpp=32"
        guest.wait_for("PVD drawn")
        for connector in (0, 1):
            shows(guest, planes, workdir, connector, expected)
        web_viewer_lists(planes, {0: (WIDTH, HEIGHT), 1: (WIDTH, HEIGHT)})
        if change_mode:
            mode_change_and_back(guest, planes, workdir, expected)


def shows(
    guest: guest_vm.Qemu,
    planes: Path,
    workdir: Path,
    connector: int,
    expected: npt.NDArray[np.uint8],
) -> None:
    """The planes and QEMU's display both show `expected` on `connector`, pixel for pixel."""
    plane_png, qemu_ppm = workdir / f"plane{connector}.png", workdir / f"qemu{connector}.ppm"
    settles(functools.partial(snapshot, planes, connector, plane_png), expected)
    settles(functools.partial(guest.screendump, qemu_ppm, connector), expected)


def mode_change_and_back(
    guest: guest_vm.Qemu, planes: Path, workdir: Path, expected: npt.NDArray[np.uint8]
) -> None:
    """The guest sets NEW_MODE on scanout 0 through KMS, holds it, and lets fbdev restore."""
    width, height = NEW_MODE
    plain = np.full((height, width, 3), PLAIN_FILL, np.uint8)
    vnc = ServerThread(str(planes), VNC_PASSWORD)
    try:
        capture = functools.partial(vnc_capture, vnc.port(PlaneKey(DOMID, 0, 0)), workdir)
        guest.send(f"modeset {width}x{height}")
        guest.wait_for(f"PVD modeset {width}x{height}")
        shows(guest, planes, workdir, 0, plain)
        shows(guest, planes, workdir, 1, expected)
        web_viewer_lists(planes, {0: NEW_MODE, 1: (WIDTH, HEIGHT)})
        settles(capture, plain)
        guest.send("")  # modetest waits for a line, then removes its framebuffer and exits
        assert guest.wait_for("PVD modeset done") == "PVD modeset done rc=0"
        for connector in (0, 1):
            shows(guest, planes, workdir, connector, expected)
        web_viewer_lists(planes, {0: (WIDTH, HEIGHT), 1: (WIDTH, HEIGHT)})
        settles(capture, expected)
    finally:
        vnc.close()


def vnc_capture(port: int, workdir: Path) -> npt.NDArray[np.uint8]:
    """The screen a new VNC client gets: the server's framebuffer is the connector's mode."""
    out = workdir / "vnc.png"
    result = subprocess.run(
        [VNCDO, "-s", f"127.0.0.1::{port}", "-p", VNC_PASSWORD, "capture", str(out)],
        check=False, capture_output=True, timeout=SETTLE_TIMEOUT,
    )  # fmt: skip
    if result.returncode != 0:
        return np.zeros((0, 0, 3), np.uint8)
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB"))


def web_viewer_lists(planes: Path, modes: dict[int, tuple[int, int]]) -> None:
    """The web viewer, a client of the same planes socket, lists the guest's scanouts live,
    each showing a framebuffer in the mode `modes` gives for its connector."""
    wanted = {(DOMID, connector, *mode, *mode) for connector, mode in modes.items()}
    viewer = BackgroundViewer(planes, "127.0.0.1", 0)
    try:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            with urllib.request.urlopen(viewer.url + "api/planes", timeout=PATIENCE) as reply:
                listing = json.load(reply)
            shown = {
                (row["domid"], row["connector"], row["mode_width"], row["mode_height"],
                 row["width"], row["height"])
                for row in listing["planes"]
                if row["fb_cookie"]
            }  # fmt: skip
            if shown == wanted:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"web viewer lists {sorted(shown)}, not {sorted(wanted)}")
            time.sleep(0.1)
    finally:
        viewer.close()


@pytest.fixture
def logged_backend(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """`pvdisplay vhost-user-gpu` as the README starts it, one scanout, its log in a file:
    (vhost-user socket, planes socket, log)."""
    vhost, planes, log = tmp_path / "gpu.sock", tmp_path / "gpu-planes.sock", tmp_path / "log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [PVDISPLAY, "vhost-user-gpu", "--socket-path", str(vhost),
             "--planes-socket", str(planes), "--domid", str(DOMID)],
            stderr=stderr,
        )  # fmt: skip
    try:
        guest_vm.wait_for_socket(vhost, process)
        guest_vm.wait_for_socket(planes, process)
        yield vhost, planes, log
        assert process.poll() is None, "the back-end died"
    finally:
        process.terminate()
        process.wait(PATIENCE)


def test_make_run_guest_boots_the_guest_against_a_running_back_end(
    files: guest_vm.GuestFiles, logged_backend: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """docs/virtio-gpu.md's recipe: the back-end, then `make run-guest`."""
    vhost, planes, _ = logged_backend
    qemu = subprocess.Popen(
        ["make", "-s", "-C", str(guest_vm.REPO), "run-guest", f"GPU_SOCKET={vhost}",
         f"GPU_SCANOUT={WIDTH}x{HEIGHT}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert qemu.stdout is not None
        for line in qemu.stdout:
            if line.startswith(("PVD drawn", "PVD error")):
                assert line.startswith("PVD drawn")
                break
        settles(functools.partial(snapshot, planes, 0, tmp_path / "s.png"), files.expected_rgb())
    finally:
        os.killpg(qemu.pid, signal.SIGTERM)
        qemu.communicate(timeout=PATIENCE)


def test_a_guest_without_shared_memory_gets_one_warning_saying_what_qemu_needs(
    files: guest_vm.GuestFiles, logged_backend: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """QEMU 10 without a memfd memory backend fails to share guest RAM and sends no
    memory table; the guest boots without a GPU."""
    vhost, _, log = logged_backend
    warning = (
        "warning pvdisplay.virtio.vhost_user the front-end started the device without "
        "sharing guest memory; run QEMU with -object memory-backend-memfd,id=mem,"
        "size=<its -m>,share=on -numa node,memdev=mem"
    )
    with guest_vm.Qemu(files, tmp_path, vhost, shared_memory=False) as guest:
        guest.wait_for("PVD fb")  # the kernel gave up on the GPU, its fbdev is another's
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while warning not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    said = [line for line in log.read_text().splitlines() if " warning " in line]
    assert [line.split(" ", 1)[1] for line in said] == [warning]


def test_guest_pattern_on_both_scanouts_mode_change_then_reconnect(
    files: guest_vm.GuestFiles, backend: tuple[Path, Path], tmp_path: Path
) -> None:
    vhost, planes = backend
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    boot_and_check(files, first, vhost, planes, change_mode=True)
    boot_and_check(files, second, vhost, planes, change_mode=False)
