"""The asyncio server in-process: sockets, identity, lifecycle and bounded output."""

import asyncio
import logging
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pvdisplay.store.server import XenStoreServer, parse_quotas
from pvdisplay.store.tree import Quotas
from pvdisplay.wire.xs_wire import MessageReader, MessageType, XsMessage

T = MessageType


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 120))


class Client:
    """A raw asyncio connection speaking whole messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = MessageReader()
        self.events: list[bytes] = []
        self.req_id = 0

    @classmethod
    async def open(cls, path: Path) -> "Client":
        return cls(*await asyncio.open_unix_connection(path))

    async def call(self, kind: int, payload: bytes) -> XsMessage:
        self.req_id += 1
        self.writer.write(XsMessage(kind, self.req_id, 0, payload).encode())
        while True:
            for message in self.framer.feed(await self.reader.read(65536)):
                assert isinstance(message, XsMessage)
                if message.type == T.WATCH_EVENT:
                    self.events.append(message.payload)
                else:
                    assert message.req_id == self.req_id
                    return message

    async def ok(self, kind: int, payload: bytes) -> bytes:
        reply = await self.call(kind, payload)
        assert reply.type == kind, reply
        return reply.payload

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def pump(rounds: int = 5) -> None:
    """Let the event loop run a few iterations, so the server handles what is ready."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_sockets_identity_and_domain_lifecycle(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with XenStoreServer(tmp_path / "xs") as server:
            assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o600
            assert stat.S_IMODE(server.readonly_socket_path.stat().st_mode) == 0o660
            dom0 = await Client.open(server.socket_path)
            await dom0.ok(T.INTRODUCE, b"3\x00100\x007\0")
            assert server.domain_socket_path(3).is_socket()

            guest = await Client.open(server.domain_socket_path(3))
            await guest.ok(T.WRITE, b"whoami\0guest three")
            assert await dom0.ok(T.READ, b"/local/domain/3/whoami\0") == b"guest three"
            assert (await guest.call(T.READ, b"/tool\0")).payload == b"EACCES\0"

            await dom0.ok(T.RELEASE, b"3\0")
            assert await guest.reader.read() == b"", "released guests are disconnected"
            assert not server.domain_socket_path(3).exists()

            await dom0.ok(T.INTRODUCE, b"3\x00100\x007\0")
            again = await Client.open(server.domain_socket_path(3))
            assert (await again.call(T.READ, b"whoami\0")).payload == b"ENOENT\0"
            await again.close()
            await dom0.close()
            await guest.close()
        assert not server.socket_path.exists()
        assert not server.readonly_socket_path.exists()
        assert not server.domain_socket_path(3).exists()

    run(scenario)


def test_a_live_daemon_is_not_replaced_but_a_stale_socket_is(tmp_path: Path) -> None:
    stale = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))

    async def scenario() -> None:
        async with XenStoreServer(tmp_path) as server:
            with pytest.raises(OSError, match="another xenstored"):
                await XenStoreServer(tmp_path).start()
            client = await Client.open(server.socket_path)
            assert await client.ok(T.READ, b"/tool\0") == b""
            await client.close()

    run(scenario)


def test_the_read_only_socket_is_held_to_a_guests_quotas(tmp_path: Path) -> None:
    """socket_ro is mode 0660: its users get a guest's limits, not dom0's."""

    async def scenario() -> None:
        async with XenStoreServer(tmp_path, Quotas(watches=2, connections=2)) as server:
            dom0 = await Client.open(server.socket_path)
            await dom0.ok(T.INTRODUCE, b"3\x00100\x007\0")
            guest = await Client.open(server.domain_socket_path(3))
            readers = [await Client.open(server.readonly_socket_path) for _ in range(2)]
            for client in (guest, *readers):
                await client.ok(T.WATCH, b"@releaseDomain\0a\0")
            await guest.ok(T.WATCH, b"@releaseDomain\0b\0")
            guest_refusal = await guest.call(T.WATCH, b"@releaseDomain\0c\0")
            reader_refusal = await readers[1].call(T.WATCH, b"@releaseDomain\0c\0")
            assert guest_refusal.type == reader_refusal.type == T.ERROR
            assert guest_refusal.payload == reader_refusal.payload == b"E2BIG\0"

            third = await Client.open(server.readonly_socket_path)
            assert await third.reader.read() == b"", "over the connections quota: closed"
            for client in (dom0, guest, *readers, third):
                await client.close()

    run(scenario)


@pytest.mark.parametrize("read_only", [False, True], ids=["socket", "socket_ro"])
def test_a_client_that_never_reads_replies_is_throttled(tmp_path: Path, read_only: bool) -> None:
    """Requests stop being read once `outstanding` replies wait, and resume when read."""
    limit = 64 << 20

    async def scenario() -> None:
        async with XenStoreServer(tmp_path, Quotas(outstanding=4)) as server:
            flooder = socket.socket(socket.AF_UNIX)
            flooder.setblocking(False)
            path = server.readonly_socket_path if read_only else server.socket_path
            flooder.connect(str(path))
            request = XsMessage(T.READ, 0, 0, b"/tool/xenstored\0").encode()
            sent = 0
            idle_rounds = 0
            while idle_rounds < 20 and sent * len(request) < limit:
                progressed = False
                try:
                    while True:
                        flooder.send(request)
                        sent += 1
                        progressed = True
                except BlockingIOError:
                    pass
                idle_rounds = 0 if progressed else idle_rounds + 1
                await pump()
            assert idle_rounds == 20, "the server kept reading requests nobody collected"

            framer = MessageReader()
            answered = 0
            while answered < sent:
                try:
                    data = flooder.recv(1 << 20)
                except BlockingIOError:
                    await pump()
                    continue
                answered += sum(1 for message in framer.feed(data))
            assert answered == sent
            flooder.close()

    run(scenario)


def test_events_for_a_watcher_that_never_reads_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writes = 300
    token = b"t" * 2000

    async def scenario() -> None:
        async with XenStoreServer(tmp_path, Quotas(event_backlog=8)) as server:
            deaf = socket.socket(socket.AF_UNIX)
            deaf.setblocking(False)
            deaf.connect(str(server.socket_path))
            deaf.send(XsMessage(T.WATCH, 1, 0, b"/ev\0" + token + b"\0").encode())
            writer = await Client.open(server.socket_path)
            for index in range(writes):
                await writer.ok(T.WRITE, b"/ev\0" + str(index).encode())
            await writer.close()

            framer = MessageReader()
            events = 0
            while True:
                try:
                    data = deaf.recv(1 << 20)
                except BlockingIOError:
                    break
                events += sum(
                    isinstance(message, XsMessage) and message.type == T.WATCH_EVENT
                    for message in framer.feed(data)
                )
            deaf.close()
            assert 0 < events < writes

    with caplog.at_level(logging.WARNING):
        run(scenario)
    assert "dropping watch events" in caplog.text


def test_quota_settings_from_the_command_line() -> None:
    assert parse_quotas(["nodes=5", "node-size=100"]) == Quotas(nodes=5, node_size=100)
    for bad in ("nodes", "bogus=1", "nodes=-1", "nodes=0", "path-max=9999"):
        with pytest.raises(ValueError):
            parse_quotas([bad])
    # Digits str.isdigit() accepts but int() refuses, or refuses to convert at that length.
    for number in ("\N{SUPERSCRIPT TWO}", "\N{ARABIC-INDIC DIGIT FIVE}", "9" * 5000):
        with pytest.raises(ValueError, match=r"^quota nodes needs a whole number .*\(nodes=100\)"):
            parse_quotas([f"nodes={number}"])
