"""A real arm64 Linux guest's virtio_gpu driver against `pvdisplay vhost-user-gpu`.

QEMU 10 (TCG, virtio-mmio) keeps the transport; our back-end serves both virtqueues. The
guest's init writes a known pattern to /dev/fb0; the test checks it pixel for pixel on
both scanouts, through the planes socket (`pvdisplay snapshot`) and through QEMU's own
display (`screendump`, fed by the vhost-user-gpu display channel). Then QEMU goes away
and comes back: the back-end serves the new connection from scratch.

Needs the files `make test-guest` fetches into .cache/guest (skipped without them).
"""

import functools
import json
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

WIDTH, HEIGHT = 1280, 800
DOMID = 3
SETTLE_TIMEOUT = 30.0
PVDISPLAY = str(Path(sys.executable).parent / "pvdisplay")

pytestmark = pytest.mark.skipif(
    not guest_vm.FETCHED.exists(), reason="guest files missing: run `make test-guest`"
)


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
        process.wait(30)


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


def boot_and_check(files: guest_vm.GuestFiles, workdir: Path, vhost: Path, planes: Path) -> None:
    expected = files.expected_rgb()
    with guest_vm.Qemu(files, workdir, vhost, outputs=2) as guest:
        assert guest.wait_for("PVD fb") == f"PVD fb size={WIDTH},{HEIGHT} stride={WIDTH * 4} bpp=32"
        guest.wait_for("PVD drawn")
        for connector in (0, 1):
            plane_png, qemu_ppm = (
                workdir / f"plane{connector}.png",
                workdir / f"qemu{connector}.ppm",
            )
            settles(functools.partial(snapshot, planes, connector, plane_png), expected)
            settles(functools.partial(guest.screendump, qemu_ppm, connector), expected)
        web_viewer_lists_both_scanouts(planes)


def web_viewer_lists_both_scanouts(planes: Path) -> None:
    """The web viewer, a client of the same planes socket, shows the guest's scanouts live."""
    viewer = BackgroundViewer(planes, "127.0.0.1", 0)
    try:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            with urllib.request.urlopen(viewer.url + "api/planes", timeout=10) as reply:
                listing = json.load(reply)
            shown = {
                (row["domid"], row["connector"], row["width"], row["height"])
                for row in listing["planes"]
                if row["fb_cookie"]
            }
            if shown == {(DOMID, 0, WIDTH, HEIGHT), (DOMID, 1, WIDTH, HEIGHT)}:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"web viewer lists {sorted(shown)}")
            time.sleep(0.1)
    finally:
        viewer.close()


def test_guest_pattern_on_both_scanouts_then_reconnect(
    files: guest_vm.GuestFiles, backend: tuple[Path, Path], tmp_path: Path
) -> None:
    vhost, planes = backend
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    boot_and_check(files, first, vhost, planes)
    boot_and_check(files, second, vhost, planes)
