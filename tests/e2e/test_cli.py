"""The `pvdisplay` command: `backend` as a real process, and one-line errors for bad input.

`pvdisplay backend` runs the emulated host's backend side (xenstored, the broker, the
display and input backend as domain 0, the web viewer) with the guests of `--config`,
until Ctrl-C; it is started here as a person would start it, and stopped the way
Ctrl-C stops it (SIGINT to its whole process group).
"""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from click.testing import CliRunner

from pvdisplay.cli import main
from pvdisplay.planes.client import PlaneClient
from rigs import PATIENCE, wait_until

pytestmark = pytest.mark.processes

CONFIG = """\
[[guest]]
name = "kestrel"
domid = 7
vdispl = ["backend=0,connectors=wing:320x240"]
"""


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Short: unix socket paths under it must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="pvcli-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def lines_of(stream: IO[str]) -> "queue.Queue[str]":
    """The lines a child writes, as they come (a reader thread, so waits are bounded)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=PATIENCE) as reply:
        body: bytes = reply.read()
    return body


def test_backend_serves_the_configs_guest_on_the_web_index_and_stops_on_ctrl_c(
    run_dir: Path,
) -> None:
    config = run_dir / "host.toml"
    config.write_text(CONFIG)
    command = [
        "backend",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        "--web",
        "127.0.0.1:0",
    ]
    with (run_dir / "stderr").open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-c", "from pvdisplay.cli import main; main()", *command],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,  # its own process group, as a terminal gives a command
        )
    try:
        assert process.stdout is not None
        output = lines_of(process.stdout)
        printed: list[str] = []
        while not printed or not printed[-1].startswith("stop with Ctrl-C"):
            printed.append(output.get(timeout=PATIENCE))
        url = next(line.split()[-1] for line in printed if "web viewer" in line)
        assert any("guest      domain 7 'kestrel'" in line for line in printed)

        assert b'id="planes"' in fetch(url)  # the index page
        deadline = time.monotonic() + PATIENCE
        rows: list[dict[str, object]] = []
        while not any(row["fb_cookie"] for row in rows):
            assert time.monotonic() < deadline, f"the index never showed the guest: {rows}"
            time.sleep(0.1)
            rows = json.loads(fetch(f"{url}api/planes"))["planes"]
        assert [(r["domid"], r["name"], r["unique_id"], r["mode_width"]) for r in rows] == [
            (7, "kestrel", "wing", 320)
        ]

        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        assert process.wait(PATIENCE) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Everything it started is gone: the backend's planes socket and xenstored's sockets.
    assert not (run_dir / "planes.sock").exists()
    assert not (run_dir / "xenstore" / "socket").exists()
    assert "Traceback" not in (run_dir / "stderr").read_text()


def test_a_second_instance_on_a_run_dir_refuses_in_one_line_and_touches_nothing(
    run_dir: Path,
) -> None:
    config = run_dir / "host.toml"
    config.write_text(CONFIG)
    first_command = ["backend", "--config", str(config), "--run-dir", str(run_dir), "--no-web"]
    with (run_dir / "stderr").open("w") as errors:
        first = subprocess.Popen(
            [sys.executable, "-c", "from pvdisplay.cli import main; main()", *first_command],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
        )
    try:
        assert first.stdout is not None
        output = lines_of(first.stdout)
        while not output.get(timeout=PATIENCE).startswith("stop with Ctrl-C"):
            pass
        sockets = [run_dir / "planes.sock", run_dir / "xenstore" / "socket"]
        wait_until(lambda: all(path.exists() for path in sockets), "the first's sockets")
        before = [path.stat().st_ino for path in sockets]
        for command in ("demo", "backend"):
            main_then = [sys.executable, "-c", "from pvdisplay.cli import main; main()", command]
            second = subprocess.run(
                [*main_then, "--run-dir", str(run_dir), "--web", "127.0.0.1:0"],
                check=False,
                capture_output=True,
                text=True,
                timeout=PATIENCE,
            )
            assert (second.returncode, second.stdout) == (1, "")
            assert second.stderr == (
                f"Error: {run_dir} is in use by another running pvdisplay demo or backend; "
                "stop it or pass another --run-dir\n"
            )
        # The first instance's sockets are the same files, and it still serves its guest.
        assert [path.stat().st_ino for path in sockets] == before
        with PlaneClient(run_dir / "planes.sock") as client:
            deadline = time.monotonic() + PATIENCE
            while not any(plane.fb_cookie for plane in client.list()):
                assert time.monotonic() < deadline, "the first instance's guest never flipped"
                time.sleep(0.1)
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(PATIENCE) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert "Traceback" not in (run_dir / "stderr").read_text()


def test_backend_and_demo_say_in_one_line_what_is_wrong_with_a_config(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[[guest]]\n")
    runner = CliRunner()
    for command in ("backend", "demo"):
        result = runner.invoke(main, [command, "--config", str(binary), "--no-web"])
        assert (result.exit_code, result.output) == (
            1,
            f"Error: {binary}: not UTF-8 text; a config is TOML\n",
        )


def test_backend_on_xen_without_xen_s_devices_says_so_in_one_line(run_dir: Path) -> None:
    if Path("/dev/xen/evtchn").exists():
        pytest.skip("this machine has Xen's devices")
    result = CliRunner().invoke(main, ["backend", "--hv", "xen", "--run-dir", str(run_dir)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot open Xen's devices: ")
    assert result.output.endswith("xen-gntdev and xen-gntalloc modules loaded)\n")
    assert result.output.count("\n") == 1


def test_backend_on_xen_refuses_a_config_of_emulated_guests(tmp_path: Path) -> None:
    config = tmp_path / "guests.toml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(main, ["backend", "--hv", "xen", "--config", str(config)])
    assert result.exit_code == 2
    assert "--config describes emulated guests; on Xen, xl creates guests" in result.output


# -- pvdisplay vnc --password-file ---------------------------------------------------------


def vnc_with_password(path: Path, tmp_path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        ["vnc", "--password-file", str(path), "--planes-socket", str(tmp_path / "none.sock")],
    )
    return result.exit_code, result.output


def test_a_password_file_that_is_not_text_or_not_readable_is_a_one_line_error(
    tmp_path: Path,
) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    assert vnc_with_password(binary, tmp_path) == (
        1,
        f"Error: --password-file {binary}: not UTF-8 text; write the password as text\n",
    )
    # A socket exists and is no directory, yet no one can read it (root included).
    unreadable = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(unreadable))
        assert vnc_with_password(unreadable, tmp_path) == (
            1,
            f"Error: --password-file {unreadable}: cannot read it (No such device or "
            "address); pass a readable file\n",
        )


@pytest.mark.parametrize("content", ["", "\n", "  \t\n"])
def test_an_empty_password_file_is_refused_not_an_empty_password(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "passwd"
    path.write_text(content)
    assert vnc_with_password(path, tmp_path) == (
        1,
        f"Error: --password-file {path}: empty; write a password of 1 to 8 characters in "
        "it, or leave the option out for no security\n",
    )


def test_a_password_longer_than_vnc_authentication_uses_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("123456789\n")
    assert vnc_with_password(path, tmp_path) == (
        1,
        f"Error: --password-file {path}: the password has 9 characters but VNC "
        "authentication uses only the first 8; shorten it\n",
    )
    path.write_text("pässwort\n")
    assert vnc_with_password(path, tmp_path) == (
        1,
        f"Error: --password-file {path}: VNC clients differ on how they encode characters "
        "outside ASCII; use ASCII characters only\n",
    )
    # Eight characters are taken: the command goes on, to find no backend.
    path.write_text("12345678\n")
    code, output = vnc_with_password(path, tmp_path)
    assert code == 1
    assert output.startswith("Error: cannot serve VNC on 127.0.0.1:5900 from ")
    assert output.count("\n") == 1
