"""Real clients against a real `pvdisplay xenstored` process.

Debian's xenstore-utils (libxenstore, pointed at our socket with XENSTORED_PATH)
and the pyxs package must not be able to tell our daemon from Xen's.
"""

import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pyxs

from pvdisplay.wire.xs_wire import MessageReader, MessageType, Oversized, XsMessage
from rigs import PATIENCE

pytestmark = pytest.mark.processes

PVDISPLAY = Path(sys.executable).with_name("pvdisplay")
T = MessageType


@dataclass
class Daemon:
    directory: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def socket(self) -> Path:
        return self.directory / "socket"

    @property
    def readonly_socket(self) -> Path:
        return self.directory / "socket_ro"

    def domain_socket(self, domid: int) -> Path:
        return self.directory / "domain" / str(domid)


def wait_for_socket(daemon: Daemon) -> None:
    """Block until the daemon accepts connections (or fail if it died)."""
    while True:
        if daemon.process.poll() is not None:
            pytest.fail(f"xenstored exited {daemon.process.returncode}:\n{daemon.log.read_text()}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(daemon.socket))
                return
        except OSError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.process.wait(timeout=0.05)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    directory = tmp_path_factory.mktemp("xenstored")
    log = directory.parent / f"{directory.name}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [PVDISPLAY, "xenstored", "--socket-dir", directory, "--quota", "nodes=40"],
            stdout=log_file,
            stderr=log_file,
        )
    running = Daemon(directory, process, log)
    try:
        wait_for_socket(running)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=PATIENCE) == 0, log.read_text()
    assert not running.socket.exists() and not running.readonly_socket.exists()
    assert "Traceback" not in log.read_text()


def xs(
    daemon: Daemon, tool: str, *args: str, via: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run xenstore-<tool> against the daemon (its dom0 socket unless `via` says otherwise)."""
    env = {**os.environ, "XENSTORED_PATH": str(via or daemon.socket)}
    return subprocess.run(
        [f"xenstore-{tool}", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def xs_ok(daemon: Daemon, tool: str, *args: str, via: Path | None = None) -> str:
    result = xs(daemon, tool, *args, via=via)
    assert result.returncode == 0, result.stderr
    return result.stdout


def dom0(daemon: Daemon) -> pyxs.Client:
    client = pyxs.Client(unix_socket_path=str(daemon.socket))
    # pyxs only sends RELEASE/RESUME/SET_TARGET when /proc/xen/capabilities says
    # it runs in the control domain; our dom0 socket is the control domain.
    client.SU = True
    return client


def raw_request(sock: socket.socket, reader: MessageReader, message: XsMessage) -> XsMessage:
    sock.sendall(message.encode())
    while True:
        data = sock.recv(65536)
        assert data, "daemon closed the connection"
        for reply in reader.feed(data):
            assert isinstance(reply, XsMessage)
            if reply.type != T.WATCH_EVENT:
                return reply


class TestXenstoreUtils:
    def test_write_read_list_ls_exists_rm(self, daemon: Daemon) -> None:
        xs_ok(daemon, "write", "/utils/a", "1", "/utils/b", "two words", "/utils/c/d", "deep")
        assert xs_ok(daemon, "read", "/utils/a", "/utils/b") == "1\ntwo words\n"
        assert xs_ok(daemon, "list", "/utils") == "a\nb\nc\n"
        assert xs_ok(daemon, "list", "-p", "/utils/c") == "/utils/c/d\n"
        assert xs_ok(daemon, "ls", "/utils") == 'a = "1"\nb = "two words"\nc = ""\n d = "deep"\n'
        assert xs(daemon, "exists", "/utils/a").returncode == 0
        assert xs(daemon, "exists", "/utils/missing").returncode == 1
        xs_ok(daemon, "rm", "/utils/c")
        assert xs_ok(daemon, "list", "/utils") == "a\nb\n"
        assert xs(daemon, "read", "/utils/c/d").returncode == 1

    def test_escaped_and_binary_values(self, daemon: Daemon) -> None:
        xs_ok(daemon, "write", "/utils/binary", "tab\\there\\x01\\\\")
        # xenstore-read escapes control characters below 010 in octal.
        assert xs_ok(daemon, "read", "/utils/binary") == "tab\\there\\001\\\\\n"
        with dom0(daemon) as client:
            assert client.read(b"/utils/binary") == b"tab\there\x01\\"

    def test_directories_longer_than_a_payload(self, daemon: Daemon) -> None:
        names = [f"child-{index:03d}-{'n' * 20}" for index in range(200)]
        with dom0(daemon) as client:
            for name in names:
                client.mkdir(f"/big/{name}".encode())
            # pyxs 0.4.1 knows no XS_DIRECTORY_PART, so it cannot list what
            # XS_DIRECTORY refuses with E2BIG, from this daemon as from Xen's.
            with pytest.raises(pyxs.PyXSError) as raised:
                client.list(b"/big")
            assert raised.value.args[0] == errno.E2BIG
        # libxenstore falls back to XS_DIRECTORY_PART.
        assert xs_ok(daemon, "list", "/big").split() == names
        xs_ok(daemon, "rm", "/big")

    def test_chmod_and_permission_listing(self, daemon: Daemon) -> None:
        xs_ok(daemon, "write", "/perm/node", "v")
        xs_ok(daemon, "chmod", "/perm/node", "r0", "b3", "w4")
        assert "(r0,b3,w4)" in xs_ok(daemon, "ls", "-p", "/perm")
        xs_ok(daemon, "chmod", "-r", "/perm", "n0", "r7")
        with dom0(daemon) as client:
            assert client.get_perms(b"/perm/node") == [b"n0", b"r7"]

    def test_watch_prints_every_event(self, daemon: Daemon) -> None:
        watcher = subprocess.Popen(
            ["xenstore-watch", "-n", "3", "/watched"],
            env={**os.environ, "XENSTORED_PATH": str(daemon.socket)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert watcher.stdout is not None
        try:
            assert watcher.stdout.readline() == "/watched\n", "the registration event"
            xs_ok(daemon, "write", "/watched/x", "1")
            assert watcher.stdout.readline() == "/watched/x\n"
            # Removing /watched also removes /watched/x, but as in xenstored a
            # node removed with its ancestor only fires watches set exactly on it.
            xs_ok(daemon, "rm", "/watched")
            assert watcher.stdout.readline() == "/watched\n"
            assert watcher.wait(timeout=60) == 0
        finally:
            watcher.kill()
            watcher.wait()


class TestPyxs:
    def test_tree_operations(self, daemon: Daemon) -> None:
        with dom0(daemon) as client:
            client.write(b"/pyxs/a", b"1")
            client.mkdir(b"/pyxs/dir")
            assert client.read(b"/pyxs/a") == b"1"
            assert sorted(client.list(b"/pyxs")) == [b"a", b"dir"]
            assert client.exists(b"/pyxs/dir")
            assert not client.exists(b"/pyxs/none")
            client.set_perms(b"/pyxs/a", [b"n0", b"r2"])
            assert client.get_perms(b"/pyxs/a") == [b"n0", b"r2"]
            assert [path for path, _, _ in client.walk(b"/pyxs")] == [
                b"/pyxs",
                b"/pyxs/a",
                b"/pyxs/dir",
            ]
            client.delete(b"/pyxs")
            assert not client.exists(b"/pyxs")
            with pytest.raises(pyxs.PyXSError) as raised:
                client.read(b"/pyxs/a")
            assert raised.value.args[0] == errno.ENOENT
            assert client.get_domain_path(3) == b"/local/domain/3"

    def test_monitor(self, daemon: Daemon) -> None:
        with dom0(daemon) as client, client.monitor() as monitor:
            monitor.watch(b"/mon", b"token")
            events = monitor.wait()
            assert next(events) == (b"/mon", b"token")
            client.write(b"/mon/leaf", b"x")
            assert next(events) == (b"/mon/leaf", b"token")

    def test_transaction_conflict(self, daemon: Daemon) -> None:
        with dom0(daemon) as first, dom0(daemon) as second:
            first.write(b"/tx/counter", b"1")
            first.transaction()
            assert first.read(b"/tx/counter") == b"1"
            second.write(b"/tx/counter", b"2")
            first.write(b"/tx/counter", b"from-transaction")
            first.write(b"/tx/other", b"also")
            assert first.commit() is False
            assert second.read(b"/tx/counter") == b"2"
            assert not second.exists(b"/tx/other")
            # The retry, with nobody interfering, commits.
            first.transaction()
            value = int(first.read(b"/tx/counter"))
            first.write(b"/tx/counter", str(value + 1).encode())
            assert second.read(b"/tx/counter") == b"2", "invisible until commit"
            assert first.commit() is True
            assert second.read(b"/tx/counter") == b"3"


class TestGuestDomain:
    def test_a_guest_touches_only_what_it_may(self, daemon: Daemon) -> None:
        with dom0(daemon) as client:
            client.write(b"/secret", b"dom0 only")
            client.write(b"/backend/vdispl/7/0/state", b"1")
            client.set_perms(b"/backend/vdispl/7", [b"n0", b"r7"])
            client.set_perms(b"/backend/vdispl/7/0/state", [b"n0", b"r7"])
            client.introduce_domain(7, 1234, 5)
            assert client.is_domain_introduced(7)
        guest = daemon.domain_socket(7)
        assert guest.is_socket()

        xs_ok(daemon, "write", "device/vdispl/0/state", "1", via=guest)
        assert xs_ok(daemon, "read", "/local/domain/7/device/vdispl/0/state") == "1\n"
        assert "(n7)" in xs_ok(daemon, "ls", "-p", "/local/domain/7")
        assert xs_ok(daemon, "read", "/backend/vdispl/7/0/state", via=guest) == "1\n"

        for refused in (
            xs(daemon, "read", "/secret", via=guest),
            xs(daemon, "write", "/secret", "mine", via=guest),
            xs(daemon, "write", "/backend/vdispl/7/0/state", "6", via=guest),
            xs(daemon, "write", "/newtop", "x", via=guest),
            xs(daemon, "rm", "/backend/vdispl/7", via=guest),
            xs(daemon, "list", "/local/domain/0", via=guest),
            xs(daemon, "chmod", "/local/domain/7/device", "b0", via=guest),
        ):
            assert refused.returncode == 1, refused
        assert xs_ok(daemon, "read", "/secret") == "dom0 only\n"
        assert xs_ok(daemon, "read", "/backend/vdispl/7/0/state") == "1\n"

        xs_ok(daemon, "chmod", "/local/domain/7/device", "n7", "r0", via=guest)
        with pyxs.Client(unix_socket_path=str(guest)) as as_guest:
            with pytest.raises(pyxs.PyXSError) as raised:
                as_guest.write(b"/secret", b"x")
            assert raised.value.args[0] == errno.EACCES
            with pytest.raises(pyxs.PyXSError) as raised:
                as_guest.introduce_domain(8, 1, 1)
            assert raised.value.args[0] == errno.EACCES

    def test_release_closes_the_guest_and_fires_release_domain(self, daemon: Daemon) -> None:
        with dom0(daemon) as client, client.monitor() as monitor:
            client.introduce_domain(9, 1, 1)
            monitor.watch(b"@releaseDomain", b"released")
            events = monitor.wait()
            assert next(events) == (b"@releaseDomain", b"released")
            with socket.socket(socket.AF_UNIX) as guest:
                guest.connect(str(daemon.domain_socket(9)))
                reply = raw_request(guest, MessageReader(), XsMessage(T.WRITE, 1, 0, b"mine\0v"))
                assert reply.payload == b"OK\0"
                client.release_domain(9)
                assert next(events) == (b"@releaseDomain", b"released")
                assert guest.recv(1) == b"", "the guest's connection is closed"
            assert not daemon.domain_socket(9).exists()
            assert not client.is_domain_introduced(9)
            assert not client.exists(b"/local/domain/9")


class TestReadOnlySocket:
    def test_reads_work_and_writes_are_refused(self, daemon: Daemon) -> None:
        xs_ok(daemon, "write", "/ro/value", "v")
        via = daemon.readonly_socket
        assert xs_ok(daemon, "read", "/ro/value", via=via) == "v\n"
        assert xs_ok(daemon, "list", "/ro", via=via) == "value\n"
        assert xs(daemon, "write", "/ro/value", "w", via=via).returncode == 1
        assert xs(daemon, "rm", "/ro/value", via=via).returncode == 1
        with pyxs.Client(unix_socket_path=str(via)) as reader:
            attempts: list[Callable[[], object]] = [
                lambda: reader.write(b"/ro/value", b"w"),
                lambda: reader.mkdir(b"/ro/new"),
                lambda: reader.set_perms(b"/ro/value", [b"b0"]),
            ]
            for attempt in attempts:
                with pytest.raises(pyxs.PyXSError) as raised:
                    attempt()
                assert raised.value.args[0] == errno.EACCES
        assert xs_ok(daemon, "read", "/ro/value") == "v\n"


class TestBadInput:
    @pytest.mark.parametrize(
        ("message", "error"),
        [
            (XsMessage(T.READ, 1, 0, b"/tool"), b"EINVAL\0"),
            (XsMessage(99, 2, 0, b"/tool\0"), b"ENOSYS\0"),
            (XsMessage(T.READ, 3, 1234, b"/tool\0"), b"ENOENT\0"),
            (XsMessage(T.WRITE, 4, 0, b"/caf\xc3\xa9\0x"), b"EINVAL\0"),
            (XsMessage(T.WRITE, 5, 0, b"/" + b"a" * 3100 + b"\0x"), b"EINVAL\0"),
            (XsMessage(T.TRANSACTION_END, 6, 0, b"maybe\0"), b"EINVAL\0"),
        ],
    )
    def test_error_replies_and_the_connection_survives(
        self, daemon: Daemon, message: XsMessage, error: bytes
    ) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(daemon.socket))
            reader = MessageReader()
            reply = raw_request(sock, reader, message)
            assert (reply.type, reply.req_id, reply.tx_id) == (
                T.ERROR,
                message.req_id,
                message.tx_id,
            )
            assert reply.payload == error
            reply = raw_request(sock, reader, XsMessage(T.READ, 7, 0, b"/tool/xenstored\0"))
            assert (reply.type, reply.payload) == (T.READ, b"")

    def test_oversized_payload_is_skipped_with_e2big(self, daemon: Daemon) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(daemon.socket))
            reader = MessageReader()
            sock.sendall(struct.pack("=IIII", T.WRITE, 41, 0, 10_000) + b"\0" * 10_000)
            sock.sendall(XsMessage(T.READ, 42, 0, b"/tool\0").encode())
            replies: list[XsMessage | Oversized] = []
            while len(replies) < 2:
                replies += reader.feed(sock.recv(65536))
            assert replies == [
                XsMessage(T.ERROR, 41, 0, b"E2BIG\0"),
                XsMessage(T.READ, 42, 0, b""),
            ]

    def test_broken_clients_do_not_stop_the_others(self, daemon: Daemon) -> None:
        stalled = socket.socket(socket.AF_UNIX)
        stalled.connect(str(daemon.socket))
        stalled.sendall(struct.pack("=IIII", T.WRITE, 1, 0, 4096) + b"/half")
        with socket.socket(socket.AF_UNIX) as cut:
            cut.connect(str(daemon.socket))
            cut.sendall(b"\x0b\x00\x00")
        with socket.socket(socket.AF_UNIX) as deaf:
            deaf.connect(str(daemon.socket))
            # A watcher that never reads: its events pile up, nobody waits for it.
            deaf.sendall(XsMessage(T.WATCH, 1, 0, b"/\0deaf\0").encode())
            with dom0(daemon) as client:
                for index in range(300):
                    client.write(b"/noisy", b"x" * 1000 + str(index).encode())
                assert client.read(b"/noisy").endswith(b"299")
        stalled.close()
        assert xs_ok(daemon, "read", "/noisy").endswith("299\n")


class TestCommandLine:
    def test_bad_quota_is_a_one_line_usage_error(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [PVDISPLAY, "xenstored", "--socket-dir", tmp_path, "--quota", "bogus=1"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "--quota" in result.stderr and "node-size" in result.stderr

    def test_a_quota_in_digits_int_refuses_names_the_key(self, tmp_path: Path) -> None:
        result = subprocess.run(
            [
                PVDISPLAY,
                "xenstored",
                "--socket-dir",
                tmp_path,
                "--quota",
                "nodes=\N{SUPERSCRIPT TWO}",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr and "invalid literal" not in result.stderr
        (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert "--quota" in error and "quota nodes needs a whole number" in error
        assert "(nodes=100)" in error

    def test_a_live_daemon_in_the_socket_dir_is_named_as_the_problem(self, daemon: Daemon) -> None:
        result = subprocess.run(
            [PVDISPLAY, "xenstored", "--socket-dir", daemon.directory],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert result.stderr == (
            f"Error: another xenstored is listening on {daemon.socket}; "
            "stop that daemon or pass another --socket-dir\n"
        )
        assert xs_ok(daemon, "read", "/tool/xenstored") == "\n"

    def test_a_socket_dir_too_long_for_socket_addresses_says_so(self, tmp_path: Path) -> None:
        directory = tmp_path / ("d" * 120)
        result = subprocess.run(
            [PVDISPLAY, "xenstored", "--socket-dir", directory],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        size = len(os.fsencode(directory / "socket"))
        assert result.stderr == (
            f"Error: cannot serve XenStore in {directory}: socket path {directory / 'socket'} "
            f"is {size} bytes, over the 107 a unix socket address holds; "
            "pass another --socket-dir\n"
        )

    def test_unusable_socket_dir_names_the_fix(self, tmp_path: Path) -> None:
        not_a_directory = tmp_path / "file"
        not_a_directory.write_text("")
        result = subprocess.run(
            [PVDISPLAY, "xenstored", "--socket-dir", not_a_directory / "sub"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("Error: cannot serve XenStore")
        assert "--socket-dir" in result.stderr
