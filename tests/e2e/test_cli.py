"""The `pvdisplay` command: `backend` as a real process, and one-line errors for bad input.

`pvdisplay backend` runs the emulated host's backend side (xenstored, the broker, the
display and input backend as domain 0, the web viewer) with the guests of `--config`,
until Ctrl-C; it is started here as a person would start it, and stopped the way
Ctrl-C stops it (SIGINT to its whole process group).
"""

import asyncio
import contextlib
import fcntl
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from PIL import Image

import rigs
from pvdisplay import toolstack
from pvdisplay.cli import main
from pvdisplay.guests import pattern
from pvdisplay.planes.client import PlaneClient
from pvdisplay.wire import fourcc
from rigs import PATIENCE, wait_until

pytestmark = pytest.mark.processes

SCRIPT = Path(sys.executable).parent / "pvdisplay"
"""The `pvdisplay` command the venv installed."""

Popen = subprocess.Popen[str]

CONFIG = """\
[[guest]]
name = "kestrel"
domid = 7
vdispl = ["backend=0,connectors=wing:320x240"]
"""


@pytest.fixture(autouse=True)
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command as installed on PATH: hints name it `pvdisplay` (run in-process too)."""
    monkeypatch.setenv("PATH", f"{SCRIPT.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])


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


@contextlib.contextmanager
def started_host(command: list[str | Path], stderr: Path, **popen: Any) -> Iterator[Popen]:
    """`command` (demo or backend) started in a process group of its own, as a terminal
    starts a command, its stderr written to `stderr`; killed if it outlives the block."""
    with stderr.open("w") as errors:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
            **popen,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def banner_of(host: Popen) -> list[str]:
    """The lines a host prints once it is up, its last "stop with Ctrl-C"."""
    assert host.stdout is not None
    output = lines_of(host.stdout)
    printed = [output.get(timeout=PATIENCE)]
    while not printed[-1].startswith("stop with Ctrl-C"):
        printed.append(output.get(timeout=PATIENCE))
    return printed


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=PATIENCE) as reply:
        body: bytes = reply.read()
    return body


def test_backend_serves_the_configs_guest_on_the_web_index_and_stops_on_ctrl_c(
    run_dir: Path,
) -> None:
    config = run_dir / "host.toml"
    config.write_text(CONFIG)
    command = ["backend", "--config", str(config), "--run-dir", str(run_dir)]
    # Started as a person in a checkout starts it, with the venv not on PATH.
    checkout = SCRIPT.parent.parent.parent
    with started_host(
        [SCRIPT.relative_to(checkout), *command, "--listen", "127.0.0.1:0"],
        run_dir / "stderr",
        cwd=checkout,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    ) as process:
        printed = banner_of(process)
        url = next(line.split()[-1] for line in printed if "web viewer" in line)
        assert any("guest      domain 7 'kestrel'" in line for line in printed)
        # The examples name the command as it was started, and this run dir's planes
        # socket (not the default's), and the banner the log.
        example = (
            f"  {SCRIPT.relative_to(checkout)} snapshot --planes-socket "
            f"{run_dir / 'planes.sock'} 7 wing -o kestrel-wing.png\n"
        )
        assert example in printed
        log_file = run_dir / "pvdisplay.log"
        assert f"  log        {log_file}  (--log-level info shows it here too)\n" in printed

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
    # Everything it started is gone: the backend's planes socket and xenstored's sockets.
    assert not (run_dir / "planes.sock").exists()
    assert not (run_dir / "xenstore" / "socket").exists()
    # The terminal got no info lines; the log file got them, from every process.
    assert " info " not in (run_dir / "stderr").read_text()
    logged = log_file.read_text()
    for logger in ("toolstack.host", "store.server", "hv.local.broker", "backend_domain"):
        assert f" info pvdisplay.{logger} " in logged


def test_ctrl_c_stops_the_host_while_a_web_page_is_open(run_dir: Path) -> None:
    with started_host(
        [SCRIPT, "backend", "--run-dir", str(run_dir), "--listen", "127.0.0.1:0"],
        run_dir / "stderr",
    ) as process:
        url = next(line.split()[-1] for line in banner_of(process) if "web viewer" in line)

        async def page_open_while_stopping() -> int | None:
            async with (
                aiohttp.ClientSession() as client,
                client.ws_connect(f"{url}ws/index") as page,
            ):
                await page.receive()  # the listing: the page is served
                os.killpg(process.pid, signal.SIGINT)
                async for _ in page:
                    pass
                return page.close_code

        closed = asyncio.run(asyncio.wait_for(page_open_while_stopping(), PATIENCE))
        assert closed == aiohttp.WSCloseCode.GOING_AWAY
        assert process.wait(PATIENCE) == 0


def test_a_second_instance_on_a_run_dir_refuses_in_one_line_and_touches_nothing(
    run_dir: Path,
) -> None:
    config = run_dir / "host.toml"
    config.write_text(CONFIG)
    first_command = ["backend", "--config", str(config), "--run-dir", str(run_dir), "--no-web"]
    with started_host(
        ["pvdisplay", *first_command, "--log-level", "info"],
        run_dir / "stderr",
        env={**os.environ, "PATH": f"{SCRIPT.parent}:/usr/bin:/bin"},
    ) as first:
        printed = banner_of(first)
        # On PATH, the command is plain `pvdisplay`.
        assert (
            f"  pvdisplay snapshot --planes-socket {run_dir / 'planes.sock'} 7 wing "
            "-o kestrel-wing.png\n"
        ) in printed
        sockets = [run_dir / "planes.sock", run_dir / "xenstore" / "socket"]
        wait_until(lambda: all(path.exists() for path in sockets), "the first's sockets")
        before = [path.stat().st_ino for path in sockets]
        for command in ("demo", "backend"):
            main_then = [sys.executable, "-c", "from pvdisplay.cli import main; main()", command]
            second = subprocess.run(
                [*main_then, "--run-dir", str(run_dir), "--listen", "127.0.0.1:0"],
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
    first_log = (run_dir / "stderr").read_text()
    assert "Traceback" not in first_log
    assert " info pvdisplay.toolstack.host guest started domid=7 name=kestrel" in first_log


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
        f"Error: --password-file {binary}: not text (a vncpasswd file is encrypted); write "
        "the password itself in it, 1 to 8 ASCII characters\n",
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
    assert vnc_with_password(path, tmp_path) == (
        1,
        f"Error: no planes socket at {tmp_path / 'none.sock'}; start `pvdisplay demo` or "
        "`pvdisplay backend`, or pass the --planes-socket of a running one\n",
    )


def test_a_vncpasswd_file_is_refused_with_what_the_file_must_hold(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(bytes.fromhex("dbd83cfd727a1458"))  # what `vncpasswd` writes for "password"
    assert vnc_with_password(path, tmp_path) == (
        1,
        f"Error: --password-file {path}: not text (a vncpasswd file is encrypted); write "
        "the password itself in it, 1 to 8 ASCII characters\n",
    )
    path.write_bytes(b"\x01\x02\x03\x04\x05\x06\x07\x08")  # encrypted bytes that decode
    assert vnc_with_password(path, tmp_path) == (
        1,
        f"Error: --password-file {path}: control characters, not text (a vncpasswd file is "
        "encrypted); write the password itself in it, 1 to 8 ASCII characters\n",
    )


# -- one convention for every command --------------------------------------------------------


def test_log_level_is_taken_before_or_after_the_command(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    for arguments in (
        ["--log-level", "debug", "snapshot", "1", "0", "-o", "x.png"],
        ["snapshot", "1", "0", "-o", "x.png", "--log-level", "debug"],
    ):
        result = CliRunner().invoke(main, [*arguments, "--planes-socket", str(missing)])
        assert (result.exit_code, result.output) == (
            1,
            f"Error: no planes socket at {missing}; start `pvdisplay demo` or `pvdisplay "
            "backend`, or pass the --planes-socket of a running one\n",
        )


def test_every_server_takes_listen_and_refuses_a_bad_address_the_same_way() -> None:
    for command in ("demo", "backend", "web", "vnc"):
        result = CliRunner().invoke(main, [command, "--listen", "nowhere"])
        assert result.exit_code == 2
        assert result.output.endswith(
            "Error: Invalid value for --listen: expected HOST:PORT, e.g. 127.0.0.1:"
            f"{5900 if command == 'vnc' else 8080}; got 'nowhere'\n"
        )


def test_vnc_beyond_loopback_without_a_password_is_warned_about(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "none.sock")
    warned = CliRunner().invoke(main, ["vnc", "--listen", "0.0.0.0:0", "--planes-socket", missing])
    assert warned.exit_code == 1
    assert (
        " warning pvdisplay.outputs.listen the VNC server listens beyond this machine without "
        "authentication: anyone who reaches 0.0.0.0 on the ports its `vnc listening` log lines "
        "name sees and controls the guests; pass --password-file, or listen on 127.0.0.1\n"
    ) in warned.output
    numbered = CliRunner().invoke(
        main, ["vnc", "--listen", "0.0.0.0:5910", "--planes-socket", missing]
    )
    assert (
        "anyone who reaches 0.0.0.0:5910 and the ports after it (one per connector) sees and "
        "controls the guests"
    ) in numbered.output
    password = tmp_path / "passwd"
    password.write_text("secret\n")
    quiet = CliRunner().invoke(
        main,
        [
            "vnc",
            "--listen",
            "0.0.0.0:0",
            "--planes-socket",
            missing,
            "--password-file",
            str(password),
        ],
    )
    assert "warning" not in quiet.output


def test_the_warning_about_a_web_viewer_beyond_loopback_reaches_the_run_dirs_log(
    run_dir: Path,
) -> None:
    with started_host(
        [SCRIPT, "backend", "--run-dir", str(run_dir), "--listen", "0.0.0.0:0"],
        run_dir / "stderr",
    ) as process:
        printed = banner_of(process)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(PATIENCE) == 0
    port = next(line.split(":")[-1].strip(" /\n") for line in printed if "web viewer" in line)
    warning = (
        " warning pvdisplay.outputs.listen the web viewer listens beyond this machine without "
        f"authentication: anyone who reaches 0.0.0.0:{port} sees and controls the guests; "
        "listen on 127.0.0.1 and reach it through an SSH tunnel\n"
    )
    assert warning in (run_dir / "pvdisplay.log").read_text()
    assert warning in (run_dir / "stderr").read_text()


def test_web_on_a_busy_port_fails_in_one_line_before_saying_it_serves(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                SCRIPT,
                "web",
                "--listen",
                f"127.0.0.1:{port}",
                "--planes-socket",
                str(tmp_path / "planes.sock"),
            ],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            check=False,
        )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.endswith(
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use; pass a free "
        "--listen HOST:PORT\n"
    )
    assert "Traceback" not in result.stderr


def test_an_unusable_run_dir_is_named_without_blaming_another_instance(tmp_path: Path) -> None:
    unusable = tmp_path / "file" / "run"
    (tmp_path / "file").write_text("a file, not a directory")
    for command in ("demo", "backend"):
        result = CliRunner().invoke(main, [command, "--run-dir", str(unusable), "--no-web"])
        assert (result.exit_code, result.output) == (
            1,
            f"Error: cannot use {unusable} as the run directory: Not a directory; pass "
            "another --run-dir\n",
        )


def test_a_device_served_by_no_backend_is_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text(CONFIG.replace("backend=0", "backend=5"))
    result = CliRunner().invoke(main, ["backend", "--config", str(config), "--no-web"])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {config}: guest[0].vdispl[0]: backend: domain 5 runs no backend here; the "
        "backend is domain 0 ('Domain-0'): write backend=Domain-0 or leave it out\n",
    )


def ctrl_c_while_it_reads(
    command: list[str | Path], fifo: Path, **popen: Any
) -> tuple[int, str, str]:
    """How `command` ends (status, stdout, stderr) given Ctrl-C while it waits to read
    `fifo`, a FIFO made here that nobody writes."""
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # so the command's open returns and its read waits
    try:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
        ) as process:
            try:
                wait_until(lambda: has_open(process.pid, fifo), f"the command to open {fifo.name}")
                process.send_signal(signal.SIGINT)
                stdout, stderr = process.communicate(timeout=PATIENCE)
            finally:
                if process.poll() is None:  # given up on: it must not outlive the test
                    process.kill()
    finally:
        os.close(writer)
    return process.returncode, stdout, stderr


def test_ctrl_c_while_a_command_starts_ends_it_quietly_with_status_130(tmp_path: Path) -> None:
    # The config is a FIFO: the command waits in its start-up, reading it.
    config = tmp_path / "host.toml"
    command: list[str | Path] = [SCRIPT, "demo", "--config", str(config), "--run-dir", "run"]
    assert ctrl_c_while_it_reads(command, config, cwd=tmp_path) == (130, "", "")


@pytest.mark.parametrize("script", [SCRIPT.name, "pvdisplay-vhost-user-gpu"])
def test_ctrl_c_while_a_command_loads_ends_it_quietly_with_status_130(
    script: str, tmp_path: Path
) -> None:
    # Loading waits as long as the test wants: the click it imports first reads a FIFO.
    fifo = tmp_path / "loading"
    (tmp_path / "click.py").write_text(f"open({str(fifo)!r}).read()\n")
    command: list[str | Path] = [SCRIPT.parent / script, "--help"]
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    assert ctrl_c_while_it_reads(command, fifo, env=environment) == (130, "", "")


def test_ctrl_c_while_the_host_starts_stops_it_without_a_banner(run_dir: Path) -> None:
    # The log is a FIFO nobody reads: the host, holding the run directory, waits to open
    # it until the test reads it, so the Ctrl-C surely comes while the host starts.
    os.mkfifo(run_dir / "pvdisplay.log")
    process = subprocess.Popen(
        [SCRIPT, "demo", "--run-dir", str(run_dir), "--no-web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: run_dir_held(run_dir), "the host to take its run directory")
        process.send_signal(signal.SIGINT)
        with open(run_dir / "pvdisplay.log", encoding="utf-8") as log:  # lets the host go on
            stdout, stderr = process.communicate(timeout=PATIENCE)
            assert "info pvdisplay.toolstack.host stopping signal=SIGINT" in log.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, stdout, stderr) == (130, "", "")
    assert not (run_dir / "planes.sock").exists()


def run_dir_held(run_dir: Path) -> bool:
    lock = run_dir / "lock"
    if not lock.exists():
        return False
    with lock.open() as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def has_open(pid: int, path: Path) -> bool:
    descriptors = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(FileNotFoundError):
        return any(os.readlink(fd) == str(path) for fd in descriptors.iterdir())
    return False


def test_help_imports_nothing_heavy() -> None:
    """`pvdisplay --help` stays fast: numpy, aiohttp, pygame and the rest load only in the
    commands that run them."""
    heavy = ("numpy", "aiohttp", "pygame", "PIL", "simplejpeg", "asyncio")
    for arguments in (["--help"], ["demo", "--help"], ["vnc", "--help"]):
        probe = (
            "import sys\n"
            "from pvdisplay.cli import main\n"
            f"try: main({arguments!r})\n"
            "except SystemExit: pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        assert result.stderr == "[]\n", arguments


def test_everything_but_the_window_runs_without_pygame(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    probe = (
        "import sys\n"
        "sys.modules['pygame'] = None  # import pygame fails, as uninstalled\n"
        "import pvdisplay.toolstack.host, pvdisplay.outputs.web.server, pvdisplay.virtio.server\n"
        "from pvdisplay.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "vnc", "--planes-socket", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: no planes socket at {missing}; start `pvdisplay demo` or `pvdisplay backend`, "
        "or pass the --planes-socket of a running one\n",
    )


def test_view_without_pygame_says_how_to_get_it() -> None:
    # A process of its own: in this one, collecting the window tests imported the viewer.
    probe = (
        "import sys\n"
        "sys.modules['pygame'] = None  # import pygame fails, as uninstalled\n"
        "from pvdisplay.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "view", "1", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        1,
        "Error: the window needs pygame, which is not installed; get it with: "
        "pip install 'pvdisplay[window]'\n",
    )


# -- snapshot and vnc against a running backend ------------------------------------------------

PATTERN_ENTRY = "pvdisplay.guests.pattern:run"


@dataclass
class Shown:
    """A backend with one pattern guest: connector 0 'left' 32x24, 1 'right' 16x8 (blank)."""

    planes_socket: Path
    domid: int
    expected: npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shown]:
    config = toolstack.HostConfig(toolstack.BackendConfig("Domain-0", 0, copy=False), ())
    run = Path(tempfile.mkdtemp(prefix="pvcli-", dir="/tmp"))  # short: socket paths
    with rigs.emulated_host(config, run) as host:
        device = toolstack.parse_xl_vdispl(
            "connectors=left:32x24;right:16x8", 0, "g", {}, default_backend=0
        )
        running = host.start_guest(
            toolstack.Guest("pattern", None, (device,)), PATTERN_ENTRY, ["XRGB8888", "7"]
        )
        assert running.process.control.poll(PATIENCE), "the pattern guest never reported"
        running.process.control.recv()
        expected = pattern.expected_rgb(fourcc.by_name("XRGB8888"), 32, 24, 7)
        yield Shown(host.planes_socket, running.domid, expected)
        running.process.control.send("done")
    shutil.rmtree(run, ignore_errors=True)


def snapshot_of(shown: Shown, connector: str, output: Path | str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        [
            "snapshot",
            str(shown.domid),
            connector,
            "-o",
            str(output),
            "--planes-socket",
            str(shown.planes_socket),
        ],
    )
    return result.exit_code, result.output


def test_snapshot_writes_png_or_jpeg_by_the_suffix_and_refuses_others(
    shown: Shown, tmp_path: Path
) -> None:
    png = tmp_path / "left.png"
    assert snapshot_of(shown, "left", png)[0] == 0
    np.testing.assert_array_equal(np.asarray(Image.open(png)), shown.expected)
    for name in ("left.jpg", "LEFT.JPEG"):
        assert snapshot_of(shown, "0", tmp_path / name)[0] == 0
        with Image.open(tmp_path / name) as picture:
            assert (picture.format, picture.size) == ("JPEG", (32, 24))
            # Lossy, yet the same picture: mean error well under a tenth of the range.
            error = np.abs(np.asarray(picture, np.int16) - shown.expected.astype(np.int16))
            assert error.mean() < 25
    gif = tmp_path / "left.gif"
    code, output = snapshot_of(shown, "left", gif)
    assert code == 2
    assert output.endswith(
        f"Error: Invalid value for --output: {str(gif)!r}: cannot tell the picture format from "
        "the suffix .gif; end the name with .png, .jpg or .jpeg\n"
    )
    assert not gif.exists()


def test_snapshot_errors_are_one_line_each_with_what_to_do(shown: Shown, tmp_path: Path) -> None:
    unwritable = "/nonexistent/dir/s.png"
    assert snapshot_of(shown, "left", unwritable) == (
        1,
        f"Error: cannot write {unwritable}: No such file or directory; pass an --output in a "
        "directory you can write\n",
    )
    # A connector named by index or by unique-id is missing in the same words.
    for missing in ("7", "middle"):
        assert snapshot_of(shown, missing, tmp_path / "x.png") == (
            1,
            f"Error: domain {shown.domid} device 0 has no connector {missing!r}; has 0 (left), "
            "1 (right)\n",
        )
    # A socket file nothing listens on: a stopped backend's.
    stale = tmp_path / "stale.sock"
    socket.socket(socket.AF_UNIX).bind(str(stale))
    result = CliRunner().invoke(
        main, ["snapshot", "1", "left", "-o", "x.png", "--planes-socket", str(stale)]
    )
    assert (result.exit_code, result.output) == (
        1,
        f"Error: nothing serves the planes socket {stale} (its backend has stopped); start "
        "`pvdisplay demo` or `pvdisplay backend`, or pass the --planes-socket of a running "
        "one\n",
    )


def listener_on(port: int) -> socket.socket:
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen()
    except OSError:
        listener.close()
        raise
    return listener


@contextlib.contextmanager
def busy_ports(count: int) -> Iterator[int]:
    """`count` consecutive ports on 127.0.0.1 that something listens on; yields the first."""
    with contextlib.ExitStack() as held:
        while True:
            first = held.enter_context(listener_on(0)).getsockname()[1]
            try:
                for port in range(first + 1, first + count):
                    held.enter_context(listener_on(port))
                break
            except OSError:  # someone else has one of them: try elsewhere
                held.close()
        yield first


def vnc_on(shown: Shown, listen: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["vnc", "--listen", listen, "--planes-socket", str(shown.planes_socket)]
    )
    return result.exit_code, result.output


def test_vnc_exits_when_it_can_listen_for_no_connector(shown: Shown) -> None:
    with busy_ports(2) as port:
        code, output = vnc_on(shown, f"127.0.0.1:{port}")
    assert code == 1
    assert output.endswith(
        f"Error: cannot listen for any connector: 127.0.0.1:{port}: Address already in use; "
        f"127.0.0.1:{port + 1}: Address already in use; pass a free --listen HOST:PORT (each "
        "further connector takes the next port)\n"
    )
    # Past the last port: the second connector has none, and says so.
    with contextlib.suppress(OSError), socket.socket() as last:
        last.bind(("127.0.0.1", 65535))
        last.listen()
        code, output = vnc_on(shown, "127.0.0.1:65535")
    assert code == 1
    assert output.endswith(
        "Error: cannot listen for any connector: 127.0.0.1:65535: Address already in use; "
        "127.0.0.1:65536: no port left: ports end at 65535; pass a free --listen HOST:PORT "
        "(each further connector takes the next port)\n"
    )


def test_vnc_names_the_port_of_a_connector_it_cannot_serve_and_serves_the_rest(
    shown: Shown,
) -> None:
    with busy_ports(2) as port:
        pass  # two consecutive free ports, found by taking them
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port + 1))
        busy.listen()
        process = subprocess.Popen(
            [
                SCRIPT,
                "vnc",
                "--listen",
                f"127.0.0.1:{port}",
                "--planes-socket",
                str(shown.planes_socket),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            logged = lines_of(process.stderr)
            lines = [logged.get(timeout=PATIENCE) for _ in range(2)]
            while not all(
                any(fragment in line for line in lines)
                for fragment in ("vnc listening", "vnc port unavailable")
            ):
                lines.append(logged.get(timeout=PATIENCE))
            process.send_signal(signal.SIGINT)
            assert process.wait(PATIENCE) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    # The display number is what `vncviewer HOST:N` takes: port 5900 + N.
    assert any(
        "vnc listening" in line and f"address=127.0.0.1:{port} display={port - 5900}\n" in line
        for line in lines
    ), lines
    assert any(
        " error pvdisplay.outputs.vnc.server vnc port unavailable; this connector is not "
        "served plane="
        in line
        and f'address=127.0.0.1:{port + 1} reason="Address already in use"\n' in line
        for line in lines
    ), lines
