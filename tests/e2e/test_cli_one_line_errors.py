"""Commands whose sockets or files fail them (the planes socket for `snapshot` and `vnc`,
the log for `backend --hv xen`): one line naming the problem, never a traceback."""

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvdisplay import logs
from pvdisplay.cli import main
from pvdisplay.ipc.sockets import receive_message, send_message
from pvdisplay.planes.model import PlaneInfo
from rigs import PATIENCE

SHOWN = PlaneInfo(
    1, 0, 0, "id0", 16, 16, fb_cookie=5, fourcc="XR24", width=16, height=16, stride=64
)


@contextmanager
def backend_that_stops_when_asked_to_copy(path: Path) -> Iterator[None]:
    """A planes socket whose backend lists `SHOWN`, then stops mid-request on `copy`."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen()
    listener.settimeout(PATIENCE)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(PATIENCE)
            while receive_message(connection).body["op"] == "list":
                send_message(connection, {"planes": [SHOWN.to_json()]})

    server = threading.Thread(target=serve)
    server.start()
    try:
        yield
    finally:
        server.join(PATIENCE)
        listener.close()


def test_a_backend_stopping_mid_snapshot_is_one_line(tmp_path: Path) -> None:
    planes = tmp_path / "planes.sock"
    with backend_that_stops_when_asked_to_copy(planes):
        result = CliRunner().invoke(
            main,
            [
                "snapshot",
                "1",
                "0",
                "-o",
                str(tmp_path / "shot.png"),
                "--planes-socket",
                str(planes),
            ],
        )
    assert (result.exit_code, result.output) == (
        1,
        f"Error: the backend closed the planes socket {planes} mid-request (has it "
        "stopped?); try again once it runs\n",
    )


def test_vnc_names_a_planes_socket_it_cannot_reach_for_another_reason(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    planes = not_a_directory / "planes.sock"
    for command in (["vnc"], ["snapshot", "1", "0", "-o", str(tmp_path / "shot.png")]):
        result = CliRunner().invoke(main, [*command, "--planes-socket", str(planes)])
        assert result.exit_code == 1
        assert result.output.endswith(f"the planes socket {planes}: Not a directory\n")


def test_a_log_backend_hv_xen_cannot_write_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process the command names its log to the processes it would start, in the
    # environment; whatever it leaves there must not reach the rest of the suite's (set,
    # so monkeypatch restores the variable's absence afterwards).
    monkeypatch.setenv(logs.LOG_FILE_ENV, "")
    monkeypatch.delenv(logs.LOG_FILE_ENV)
    run_dir = tmp_path / "run"
    (run_dir / "pvdisplay.log").mkdir(parents=True, mode=0o700)
    run_dir.chmod(0o700)
    result = CliRunner().invoke(main, ["backend", "--hv", "xen", "--run-dir", str(run_dir)])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: cannot write the log {run_dir / 'pvdisplay.log'}: Is a directory; pass "
        "another --run-dir\n",
    )
    # A log it could not open is not named to processes started after it.
    assert logs.LOG_FILE_ENV not in os.environ
