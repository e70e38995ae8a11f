"""The XenStore clients over a character device, as a domU reaches xenstored (/dev/xen/xenbus).

A pseudo-terminal in raw mode stands in for the device: it is a character device the
clients open by path, and a bridge thread carries its bytes to and from a real
`XenStoreServer`, as the kernel carries the device's to xenstored's ring. What a pty
cannot show, the device keeping only the first message of each write, is checked on
`DeviceStream` directly.
"""

import asyncio
import contextlib
import os
import pty
import select
import socket
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvdisplay.store import transport
from pvdisplay.store.aio import AsyncClient
from pvdisplay.store.client import Client
from pvdisplay.store.server import XenStoreServer
from pvdisplay.wire import xs_wire
from rigs import PATIENCE


@pytest.fixture
def server_socket(tmp_path: Path) -> Iterator[Path]:
    loop = asyncio.new_event_loop()
    server = XenStoreServer(tmp_path / "xs")
    (tmp_path / "xs").mkdir()
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.socket_path
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=PATIENCE)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=PATIENCE)
    loop.close()


@pytest.fixture
def device(server_socket: Path) -> Iterator[str]:
    """The path of a character device whose bytes reach the server and come back."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server_socket))
    stop_read, stop_write = os.pipe()

    def bridge() -> None:
        while True:
            ready, _, _ = select.select([master, sock.fileno(), stop_read], [], [])
            if stop_read in ready:
                return
            if master in ready:
                sock.sendall(os.read(master, 65536))
            if sock.fileno() in ready:
                data = sock.recv(65536)
                if not data:
                    return
                os.write(master, data)

    thread = threading.Thread(target=bridge, daemon=True)
    thread.start()
    yield path
    os.write(stop_write, b"x")
    thread.join(timeout=PATIENCE)
    for fd in (master, slave, stop_read, stop_write):
        os.close(fd)
    sock.close()


def test_blocking_client_over_a_character_device(device: str) -> None:
    with Client(device) as client:
        assert client.path == device
        client.write("/dev-test/a", "1")
        assert client.read("/dev-test/a") == b"1"
        with client.watch("/dev-test", "tok") as watch:
            assert watch.get(timeout=PATIENCE) is not None  # the event a new watch fires at once
            client.write("/dev-test/b", "2")
            event = watch.get(timeout=PATIENCE)
            assert event is not None and event.path == "/dev-test/b"
        with client.start_transaction() as txn:
            txn.write("/dev-test/c", "3")
            txn.commit()
        assert sorted(client.ls("/dev-test")) == ["a", "b", "c"]


def test_closing_wakes_a_reader_blocked_on_the_device(device: str) -> None:
    client = Client(device)
    watch = client.watch("/woken", "tok")
    assert watch.get(timeout=PATIENCE) is not None
    waiter = threading.Thread(target=lambda: list(watch))
    waiter.start()
    client.close()
    waiter.join(timeout=PATIENCE)
    assert not waiter.is_alive()


def test_asyncio_client_over_a_character_device(device: str) -> None:
    async def scenario() -> None:
        async with await AsyncClient.connect(device) as client:
            watch = await client.watch("/aio-dev", "tok")
            await anext(aiter(watch))
            # Two requests in flight at once: each must reach the device on its own.
            await asyncio.gather(client.write("/aio-dev/x", "1"), client.write("/aio-dev/y", "2"))
            paths = {(await anext(aiter(watch))).path for _ in range(2)}
            assert paths == {"/aio-dev/x", "/aio-dev/y"}
            assert await client.read("/aio-dev/y") == b"2"

    asyncio.run(scenario())


def _message(payload: bytes) -> bytes:
    return xs_wire.HEADER.pack(xs_wire.MessageType.READ, 1, 0, len(payload)) + payload


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_split_messages_gives_back_each_whole_message(payloads: list[bytes]) -> None:
    messages = [_message(p) for p in payloads]
    assert transport.split_messages(b"".join(messages)) == messages


@given(st.binary(min_size=1, max_size=40), st.integers(min_value=1, max_value=15))
def test_split_messages_refuses_a_torn_tail(payload: bytes, cut: int) -> None:
    data = _message(payload)
    with pytest.raises(ValueError, match="partial"):
        transport.split_messages(data[: len(data) - min(cut, len(data) - 1)])


def test_device_stream_writes_one_message_per_write(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    stream = transport.DeviceStream(write_end)
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        if fd == write_end:
            writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    messages = [_message(b"a\0"), _message(b""), _message(b"/long/path\0")]
    stream.sendall(b"".join(messages))
    assert writes == messages
    stream.close()
    os.close(read_end)


def test_xenstore_path_prefers_a_socket_then_the_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.setenv("XENSTORED_RUNDIR", str(tmp_path))
    monkeypatch.setattr(transport, "LEGACY_SOCKET", str(tmp_path / "legacy"))
    assert transport.xenstore_path() == transport.XENBUS_DEVICE
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as listener:
        listener.bind(str(tmp_path / "legacy"))
        assert transport.xenstore_path() == str(tmp_path / "legacy")
    (tmp_path / "socket").write_text("")  # not a socket: skipped
    assert transport.xenstore_path() == str(tmp_path / "legacy")
    monkeypatch.setenv("XENSTORED_PATH", "/explicit")
    assert transport.xenstore_path() == "/explicit"
