"""End to end, with real processes: xenstored, broker, backend domain, guest domains.

Guests run the frontend library's known-pattern entry (or the demo animation); what the
backend presents is read back through the planes socket, as `pvdisplay snapshot` does,
and must equal the pattern pixel for pixel.
"""

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from PIL import Image

import rigs
from pvdisplay import toolstack, xenbus
from pvdisplay.guests import pattern
from pvdisplay.outputs import snapshot
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.model import PlaneInfo
from pvdisplay.toolstack.host import EmulatedHost, RunningGuest
from pvdisplay.wire import fourcc
from rigs import PATIENCE, wait_until

pytestmark = pytest.mark.processes

PATTERN_ENTRY = "pvdisplay.guests.pattern:run"
DEMO_ENTRY = "pvdisplay.guests.demo:run"

# Pitches that are not a multiple of 4 bytes (RGB888 at 62 and 46 pixels); widths stay
# even because a YUYV framebuffer needs whole 2-pixel blocks (the backend says EINVAL).
FRONT_ALLOCATED = "connectors=wide:62x37;small:16x9"
BACKEND_ALLOCATED = "be-alloc=1,connectors=solo:46x29"
FORMATS_AT_ONCE = 3


def guest(name: str, spec: str) -> toolstack.Guest:
    device = toolstack.parse_xl_vdispl(spec, 0, name, {}, default_backend=0)
    return toolstack.Guest(name, None, (device,))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedHost]:
    config = toolstack.HostConfig(toolstack.BackendConfig("Domain-0", 0, copy=False), ())
    with rigs.emulated_host(config, tmp_path_factory.mktemp("host")) as emulated:
        yield emulated


def receive(running: RunningGuest) -> Any:
    if not running.process.control.poll(PATIENCE):
        pytest.fail(
            f"guest {running.domid} sent nothing (exit status {running.process.returncode})"
        )
    return running.process.control.recv()


def finish(host: EmulatedHost, running: RunningGuest) -> dict[int, xenbus.XenbusState | None]:
    """Tell a pattern guest to close its display, then wait until the host destroyed it."""
    running.process.control.send("done")
    running.process.wait(PATIENCE)
    return host.wait_guest_destroyed(running.domid, PATIENCE)


def plane_of(host: EmulatedHost, domid: int, connector: int) -> PlaneInfo | None:
    """The connector's plane, or None (also while a restarting backend is not listening)."""
    try:
        with PlaneClient(host.planes_socket) as client:
            planes = client.list()
    except OSError:
        return None
    for plane in planes:
        if (plane.domid, plane.connector) == (domid, connector):
            return plane
    return None


def check_pattern(host: EmulatedHost, running: RunningGuest, fmt_name: str, seed: int) -> None:
    report = receive(running)
    fmt = fourcc.by_name(fmt_name)
    with PlaneClient(host.planes_socket) as client:
        for shown in report["connectors"]:
            index = shown["index"]
            shot = snapshot.take(client, running.domid, index)
            assert (shot.plane.width, shot.plane.height) == (shown["width"], shown["height"])
            assert shot.plane.fourcc == fourcc.fourcc_text(fmt.fourcc)
            assert shot.plane.stride == shown["pitch"]
            expected = pattern.expected_rgb(fmt, shown["width"], shown["height"], seed + index)
            np.testing.assert_array_equal(shot.rgb, expected)


def finish_all(host: EmulatedHost, guests: list[RunningGuest]) -> None:
    for running in guests:
        running.process.control.send("done")
    for running in guests:
        running.process.wait(PATIENCE)
        host.wait_guest_destroyed(running.domid, PATIENCE)


@pytest.mark.parametrize(
    "formats",
    [
        [fmt.name for fmt in fourcc.FORMATS[start : start + FORMATS_AT_ONCE]]
        for start in range(0, len(fourcc.FORMATS), FORMATS_AT_ONCE)
    ],
    ids="-".join,
)
def test_known_pattern_survives_the_trip_in_every_format_and_both_allocation_modes(
    host: EmulatedHost, formats: list[str]
) -> None:
    started = []
    for fmt in formats:
        seed = 1000 + 10 * fourcc.FORMATS.index(fourcc.by_name(fmt))
        for name, spec in (("fe", FRONT_ALLOCATED), ("be", BACKEND_ALLOCATED)):
            running = host.start_guest(guest(name, spec), PATTERN_ENTRY, [fmt, str(seed)])
            started.append((running, fmt, seed))
    for running, fmt, seed in started:
        check_pattern(host, running, fmt, seed)
    finish_all(host, [running for running, _, _ in started])


def test_snapshot_command_writes_the_png(host: EmulatedHost, tmp_path: Path) -> None:
    running = host.start_guest(guest("cli", BACKEND_ALLOCATED), PATTERN_ENTRY, ["RGB565", "7"])
    report = receive(running)
    width, height = report["connectors"][0]["width"], report["connectors"][0]["height"]
    output = tmp_path / "solo.png"

    def snapshot_command(connector: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-c", "from pvdisplay.cli import main; main()", "snapshot"),
                *(str(running.domid), connector, "-o", str(output)),
                *("--planes-socket", str(host.planes_socket)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    result = snapshot_command("solo")
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(output).convert("RGB"))
    expected = pattern.expected_rgb(fourcc.RGB565, width, height, 7)
    np.testing.assert_array_equal(picture, expected)
    missing = snapshot_command("nosuch")
    assert missing.returncode == 1
    assert "has no connector 'nosuch'; has 0 (solo)" in missing.stderr
    assert "Traceback" not in missing.stderr
    finish(host, running)


def test_eight_connectors_across_four_guests_at_once(host: EmulatedHost) -> None:
    specs = [
        "connectors=a0:40x30;a1:24x16",
        "be-alloc=1,connectors=b0:40x30;b1:33x7",
        "connectors=c0:8x8;c1:64x2",
        "be-alloc=1,connectors=d0:17x19;d1:40x30",
    ]
    guests = [
        host.start_guest(guest(f"g{n}", spec), PATTERN_ENTRY, ["XRGB8888", str(100 * n)])
        for n, spec in enumerate(specs)
    ]
    for n, running in enumerate(guests):
        check_pattern(host, running, "XRGB8888", 100 * n)
    with PlaneClient(host.planes_socket) as client:
        shown = {(p.domid, p.connector) for p in client.list() if p.fb_cookie}
    assert shown >= {(running.domid, index) for running in guests for index in (0, 1)}
    finish_all(host, guests)


def frames_shown(host: EmulatedHost, domid: int) -> int:
    plane = plane_of(host, domid, 0)
    return plane.frame if plane is not None else -1


def test_frontend_death_mid_flip_frees_everything_and_a_new_guest_connects(
    host: EmulatedHost,
) -> None:
    before = host.hv.usage(0)
    victim = host.start_guest(guest("victim", BACKEND_ALLOCATED), DEMO_ENTRY)
    wait_until(lambda: frames_shown(host, victim.domid) > 30, "the demo guest to flip")
    victim.process.kill()
    states = host.wait_guest_destroyed(victim.domid, PATIENCE)
    assert states == {0: xenbus.XenbusState.INIT_WAIT}
    assert plane_of(host, victim.domid, 0) is None
    wait_until(lambda: host.hv.usage(0) == before, "the backend to free the dead guest's pages")
    survivor = host.start_guest(guest("after", BACKEND_ALLOCATED), PATTERN_ENTRY, ["YUYV", "5"])
    check_pattern(host, survivor, "YUYV", 5)
    finish(host, survivor)


def test_backend_restart_is_survived_by_a_live_guest(host: EmulatedHost) -> None:
    running = host.start_guest(guest("steady", FRONT_ALLOCATED), DEMO_ENTRY)
    wait_until(lambda: frames_shown(host, running.domid) > 10, "the demo guest to flip")
    old_backend = host.backend
    host.restart_backend()
    assert host.backend is not old_backend
    # The new backend's planes start from frame 0 for the reconnected connector.
    wait_until(lambda: frames_shown(host, running.domid) > 5, "the guest to reconnect and flip")
    assert running.process.returncode is None, "the guest kept running"
    running.process.kill()
    host.wait_guest_destroyed(running.domid, PATIENCE)


def test_the_config_s_page_budget_binds_the_backend(tmp_path: Path) -> None:
    config = toolstack.parse_config(
        "[backend]\npage_budget = 2\n[[guest]]\nname = 'tiny'\n"
        "vdispl = 'connectors=a:16x16;b:32x8'"  # a page each
    )
    with rigs.emulated_host(config, tmp_path / "host") as emulated:
        running = emulated.start_guest(config.guests[0], PATTERN_ENTRY, ["XRGB8888", "3"])
        check_pattern(emulated, running, "XRGB8888", 3)
        assert emulated.backend is not None
        emulated.backend.control.send("status")
        assert emulated.backend.control.poll(PATIENCE)
        (device,) = emulated.backend.control.recv()
        assert (device["pages"], device["page_budget"]) == (2, 2)
        finish(emulated, running)


# -- the host process and xenstored ------------------------------------------------------


def xenstored_of(run_dir: Path) -> int:
    """The pid of the xenstored serving `run_dir`."""
    wanted = f"{run_dir}/xenstore".encode()
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"xenstored" in argv and wanted in argv:
            return int(entry.name)
    raise LookupError(f"no xenstored for {run_dir}")


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.parametrize("ending", ["two-sigterms", "sigkill"])
def test_xenstored_never_outlives_the_host(ending: str) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="pvh-", dir="/tmp"))  # short: socket paths
    host_process = subprocess.Popen(
        [
            *(sys.executable, "-c", "from pvdisplay.cli import main; main()"),
            *("--log-level", "info", "demo", "--no-web", "--run-dir", str(run_dir)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert host_process.stderr is not None
    logged: queue.Queue[str] = queue.Queue()

    def read_log(stream: IO[str]) -> None:
        for line in stream:
            logged.put(line)

    threading.Thread(target=read_log, args=(host_process.stderr,), daemon=True).start()

    def wait_logged(fragment: str) -> None:
        while fragment not in logged.get(timeout=PATIENCE):
            pass

    xenstored = None
    try:
        wait_logged("guest started")
        xenstored = xenstored_of(run_dir)
        if ending == "sigkill":
            host_process.kill()
            host_process.wait(PATIENCE)
        else:
            host_process.send_signal(signal.SIGTERM)
            wait_logged("stopping")
            host_process.send_signal(signal.SIGTERM)  # while it tears everything down
            assert host_process.wait(PATIENCE) == 0
        wait_until(lambda: not running(xenstored), "xenstored to end with the host")
    finally:
        if host_process.poll() is None:
            os.killpg(host_process.pid, signal.SIGKILL)
            host_process.wait()
        if xenstored is not None and running(xenstored):
            os.kill(xenstored, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
