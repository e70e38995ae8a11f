"""The XenStore clients (blocking and asyncio) against a real `pvdisplay xenstored`."""

import asyncio
import errno
import itertools
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pvdisplay.store.aio import AsyncClient, AsyncTransaction, AsyncWatch
from pvdisplay.store.client import Client, Transaction, Watch, default_socket_path
from pvdisplay.store.permissions import Access, Permission
from pvdisplay.store.protocol import WatchEvent, XenStoreError
from pvdisplay.wire import xs_wire
from pvdisplay.wire.xs_wire import MessageType, XsMessage
from rigs import PATIENCE

pytestmark = pytest.mark.processes

PVDISPLAY = Path(sys.executable).parent / "pvdisplay"
_paths = itertools.count()
_domids = itertools.count(11)


def start_xenstored(socket_dir: Path) -> subprocess.Popen[bytes]:
    log = (socket_dir.parent / f"{socket_dir.name}.log").open("wb")
    process = subprocess.Popen(
        [str(PVDISPLAY), "xenstored", "--socket-dir", str(socket_dir)], stdout=log, stderr=log
    )
    log.close()
    give_up = time.monotonic() + 60
    while True:
        try:
            Client(socket_dir / "socket").close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > give_up:
                process.kill()
                process.wait()
                output = (socket_dir.parent / f"{socket_dir.name}.log").read_text()
                pytest.fail(f"xenstored did not start (exit {process.returncode}):\n{output}")
            time.sleep(0.02)


def stop_xenstored(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(PATIENCE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("xs")
    process = start_xenstored(directory)
    yield directory
    stop_xenstored(process)


@pytest.fixture
def client(socket_dir: Path) -> Iterator[Client]:
    with Client(socket_dir / "socket") as connection:
        yield connection


@pytest.fixture
def base(client: Client) -> str:
    """A fresh subtree per test, so tests sharing one daemon never see each other."""
    path = f"/test/t{next(_paths)}"
    client.mkdir(path)
    return path


def test_write_read_ls_exists_rm(client: Client, base: str) -> None:
    client.write(f"{base}/a", "1")
    client.write(f"{base}/b/c", b"\x00binary\xff")
    assert client.read(f"{base}/a") == b"1"
    assert client.read(f"{base}/b/c") == b"\x00binary\xff"
    # Writing a node creates its missing ancestors with empty values.
    assert client.read(f"{base}/b") == b""
    assert sorted(client.ls(base)) == ["a", "b"]
    assert client.ls(f"{base}/a") == []
    assert client.exists(f"{base}/b/c")
    assert not client.exists(f"{base}/nothing")
    client.rm(f"{base}/b")
    assert not client.exists(f"{base}/b/c")
    assert client.ls(base) == ["a"]


def test_mkdir_makes_an_empty_node(client: Client, base: str) -> None:
    client.mkdir(f"{base}/d/e")
    assert client.read(f"{base}/d/e") == b""
    assert client.ls(f"{base}/d") == ["e"]
    client.write(f"{base}/d/e", "kept")
    client.mkdir(f"{base}/d/e")
    assert client.read(f"{base}/d/e") == b"kept"


def test_errors_carry_errno_and_path(client: Client, base: str) -> None:
    missing = f"{base}/missing"
    with pytest.raises(FileNotFoundError) as caught:
        client.read(missing)
    assert isinstance(caught.value, XenStoreError)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == missing
    with pytest.raises(FileNotFoundError):
        client.ls(missing)
    with pytest.raises(XenStoreError) as invalid:
        client.read(f"{base}/bad//path")
    assert invalid.value.errno == errno.EINVAL


def test_permissions_round_trip(client: Client, base: str) -> None:
    node = f"{base}/p"
    client.write(node, "x")
    assert client.get_permissions(node)[0].domid == 0
    wanted = [Permission(0, Access.NONE), Permission(5, Access.READ | Access.WRITE)]
    client.set_permissions(node, wanted)
    assert client.get_permissions(node) == wanted
    with pytest.raises(FileNotFoundError):
        client.set_permissions(f"{base}/missing", wanted)


def next_event(watch: Watch) -> WatchEvent:
    event = watch.get(timeout=PATIENCE)
    assert event is not None, "no watch event within 30 s"
    return event


def test_watch_sees_registration_changes_below_and_ancestor_removal(
    client: Client, base: str
) -> None:
    watched = f"{base}/w"
    with client.watch(watched, token="my-token") as watch:
        assert next_event(watch) == WatchEvent(watched, "my-token")
        client.write(f"{watched}/x/y", "1")
        assert next_event(watch) == WatchEvent(f"{watched}/x/y", "my-token")
        # A change beside the watched path fires nothing: the next event is the marker.
        client.write(f"{base}/beside", "1")
        client.write(f"{watched}/marker", "1")
        assert next_event(watch).path == f"{watched}/marker"
        client.rm(base)
        assert next_event(watch) == WatchEvent(watched, "my-token")
        assert not client.exists(watched)


def test_watch_events_keep_their_order(client: Client, base: str) -> None:
    with client.watch(base) as watch:
        assert next_event(watch).path == base
        for n in range(30):
            client.write(f"{base}/n{n}", str(n))
        assert [next_event(watch).path for _ in range(30)] == [f"{base}/n{n}" for n in range(30)]


def test_unwatch_ends_iteration_and_stops_events(client: Client, base: str) -> None:
    watch = client.watch(base)
    other = client.watch(f"{base}/x")
    assert next_event(watch).path == base
    assert next_event(other).path == f"{base}/x"
    watch.unwatch()
    client.write(f"{base}/x", "1")
    assert next_event(other).path == f"{base}/x"
    assert list(watch) == []
    with pytest.raises(StopIteration):
        watch.get(timeout=0)
    watch.unwatch()
    # The token is free again once unwatched.
    with client.watch(base, token=watch.token) as again:
        assert next_event(again).path == base


def test_watch_get_returns_none_when_nothing_fires(client: Client, base: str) -> None:
    with client.watch(base) as watch:
        assert next_event(watch).path == base
        assert watch.get(timeout=0.05) is None


def test_a_slow_watch_consumer_gets_an_overflow_event_not_unbounded_memory(
    socket_dir: Path, base: str
) -> None:
    with Client(socket_dir / "socket", max_pending_events=4) as small:
        watch = small.watch(base)
        for n in range(10):
            small.write(f"{base}/n{n}", "x")
        first = next_event(watch)
        assert first == WatchEvent(base, watch.token, overflowed=True)
        rest: list[WatchEvent] = []
        while not rest or rest[-1].path != f"{base}/n9":
            rest.append(next_event(watch))
        assert len(rest) < 4
        assert not any(event.overflowed for event in rest)


def test_watch_iteration_ends_when_the_client_closes(socket_dir: Path, base: str) -> None:
    connection = Client(socket_dir / "socket")
    watch = connection.watch(base)
    seen: list[WatchEvent] = []
    consumer = threading.Thread(target=lambda: seen.extend(watch))
    consumer.start()
    connection.write(f"{base}/x", "1")
    while len(seen) < 2:
        time.sleep(0.01)
    connection.close()
    consumer.join(PATIENCE)
    assert not consumer.is_alive()
    assert [event.path for event in seen] == [base, f"{base}/x"]
    with pytest.raises(ConnectionError):
        connection.read(base)


def test_transaction_conflict_raises_eagain_and_changes_nothing(
    client: Client, socket_dir: Path, base: str
) -> None:
    node = f"{base}/v"
    client.write(node, "0")
    with Client(socket_dir / "socket") as rival, client.start_transaction() as txn:
        assert txn.read(node) == b"0"
        txn.write(node, "mine")
        txn.write(f"{base}/also", "mine")
        assert client.read(node) == b"0"
        rival.write(node, "theirs")
        with pytest.raises(BlockingIOError) as caught:
            txn.commit()
    assert caught.value.errno == errno.EAGAIN
    assert client.read(node) == b"theirs"
    assert not client.exists(f"{base}/also")


def test_an_aborted_transaction_changes_nothing(client: Client, base: str) -> None:
    txn = client.start_transaction()
    txn.write(f"{base}/v", "1")
    assert txn.read(f"{base}/v") == b"1"
    txn.abort()
    assert not client.exists(f"{base}/v")
    with pytest.raises(ValueError, match="finished"):
        txn.read(f"{base}/v")


def test_transact_reruns_the_body_after_a_conflict(
    client: Client, socket_dir: Path, base: str
) -> None:
    node = f"{base}/v"
    client.write(node, "1")
    calls = 0
    with Client(socket_dir / "socket") as rival:

        def double(txn: Transaction) -> int:
            nonlocal calls
            calls += 1
            value = int(txn.read(node))
            if calls == 1:
                rival.write(node, "5")
            txn.write(node, str(value * 2))
            return value

        assert client.transact(double) == 5
    assert calls == 2
    assert client.read(node) == b"10"


def test_transact_gives_up_after_the_allowed_attempts(
    client: Client, socket_dir: Path, base: str
) -> None:
    node = f"{base}/v"
    client.write(node, "0")
    calls = 0
    with Client(socket_dir / "socket") as rival:

        def always_loses(txn: Transaction) -> None:
            nonlocal calls
            calls += 1
            txn.read(node)
            rival.write(node, str(calls))
            txn.write(node, "never")

        with pytest.raises(BlockingIOError):
            client.transact(always_loses, attempts=3)
    assert calls == 3
    assert client.read(node) == b"3"


def test_transact_aborts_and_reraises_other_errors(client: Client, base: str) -> None:
    def fails(txn: Transaction) -> None:
        txn.write(f"{base}/v", "1")
        raise KeyError("boom")

    with pytest.raises(KeyError):
        client.transact(fails)
    assert not client.exists(f"{base}/v")


def increment(txn: Transaction, node: str) -> None:
    txn.write(node, str(int(txn.read(node)) + 1))


def test_racing_increments_from_two_clients_all_count(socket_dir: Path, base: str) -> None:
    node = f"{base}/counter"
    rounds = 40
    with Client(socket_dir / "socket") as first, Client(socket_dir / "socket") as second:
        first.write(node, "0")

        def run(connection: Client) -> None:
            for _ in range(rounds):
                connection.transact(lambda txn: increment(txn, node), attempts=10_000)

        threads = [threading.Thread(target=run, args=(c,)) for c in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert first.read(node) == str(2 * rounds).encode()


def test_one_client_shared_by_threads_matches_every_reply(client: Client, base: str) -> None:
    watch = client.watch(f"{base}/events")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                client.write(f"{base}/w{n}/k{i}", f"{n}:{i}")
                assert client.read(f"{base}/w{n}/k{i}") == f"{n}:{i}".encode()
            client.transact(lambda txn: txn.write(f"{base}/events/w{n}", "done"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    paths = {next_event(watch).path for _ in range(5)}
    assert paths == {f"{base}/events"} | {f"{base}/events/w{n}" for n in range(4)}


def test_the_read_only_socket_refuses_writes(client: Client, socket_dir: Path, base: str) -> None:
    client.write(f"{base}/v", "1")
    with Client(socket_dir / "socket_ro") as reader:
        assert reader.read(f"{base}/v") == b"1"
        assert reader.ls(base) == ["v"]
        refusals: list[Callable[[], None]] = [
            lambda: reader.write(f"{base}/v", "2"),
            lambda: reader.mkdir(f"{base}/d"),
            lambda: reader.rm(f"{base}/v"),
            lambda: reader.set_permissions(f"{base}/v", [Permission(0, Access.READ)]),
        ]
        # As in C xenstored, a read-only connection has write access masked
        # out of every permission check, so it is refused like a guest: EACCES.
        for refused in refusals:
            with pytest.raises(PermissionError):
                refused()
    assert client.read(f"{base}/v") == b"1"
    assert client.ls(base) == ["v"]


def test_a_guest_domain_touches_only_what_its_permissions_allow(
    client: Client, socket_dir: Path, base: str
) -> None:
    domid = next(_domids)
    home = f"/local/domain/{domid}"
    client.mkdir(home)
    client.set_permissions(home, [Permission(0, Access.NONE), Permission(domid, Access.READ)])
    client.mkdir(f"{home}/data")
    client.set_permissions(f"{home}/data", [Permission(domid, Access.NONE)])
    client.write(f"{base}/secret", "s")
    client.write(f"{base}/public", "p")
    client.set_permissions(f"{base}/public", [Permission(0, Access.READ)])

    assert not client.is_domain_introduced(domid)
    client.introduce(domid, 0x1234, 5)
    assert client.is_domain_introduced(domid)
    assert client.get_domain_path(domid) == home

    guest = Client(socket_dir / "domain" / str(domid))
    with guest:
        assert guest.get_domain_path(domid) == home
        # Relative paths are below the guest's home.
        guest.write("data/x", "from guest")
        assert client.read(f"{home}/data/x") == b"from guest"
        assert guest.read(f"{home}/data/x") == b"from guest"
        assert guest.read(home) == b""
        assert guest.read(f"{base}/public") == b"p"
        with pytest.raises(PermissionError):
            guest.read(f"{base}/secret")
        with pytest.raises(PermissionError):
            guest.write(f"{base}/public", "defaced")
        with pytest.raises(PermissionError):
            guest.write(f"{home}/name", "mine")
        with pytest.raises(PermissionError):
            guest.set_permissions(home, [Permission(domid, Access.NONE)])
        with pytest.raises(PermissionError):
            guest.introduce(domid + 1, 1, 1)
        with guest.watch("data") as watch:
            assert next_event(watch) == WatchEvent("data", watch.token)
            client.write(f"{home}/data/y", "1")
            assert next_event(watch) == WatchEvent("data/y", watch.token)

        # Releasing the domain closes its connections and drops what it owned.
        client.release(domid)
        assert not client.is_domain_introduced(domid)
        with pytest.raises(ConnectionError):
            guest.read(home)
    assert not client.exists(f"{home}/data")


def test_set_target_gives_a_device_model_its_target_s_rights(
    client: Client, socket_dir: Path
) -> None:
    model, guest = next(_domids), next(_domids)
    guest_home = client.get_domain_path(guest)
    client.write(f"{guest_home}/name", "guest")
    client.set_permissions(guest_home, [Permission(guest, Access.NONE)])
    client.set_permissions(f"{guest_home}/name", [Permission(guest, Access.NONE)])
    client.introduce(model, 1, 1)
    client.introduce(guest, 1, 1)
    with Client(socket_dir / "domain" / str(model)) as device_model:
        with pytest.raises(PermissionError):
            device_model.read(f"{guest_home}/name")
        client.set_target(model, guest)
        assert device_model.read(f"{guest_home}/name") == b"guest"
    client.release(model)
    client.release(guest)


def test_client_reports_a_daemon_that_dies(tmp_path: Path) -> None:
    directory = tmp_path / "xs"
    directory.mkdir()
    process = start_xenstored(directory)
    try:
        connection = Client(directory / "socket")
        watch = connection.watch("/")
        assert next_event(watch).path == "/"
    finally:
        stop_xenstored(process)
    with pytest.raises(ConnectionError):
        watch.get(timeout=PATIENCE)
    with pytest.raises(ConnectionError):
        connection.read("/")
    connection.close()


def test_socket_path_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.delenv("XENSTORED_RUNDIR", raising=False)
    assert default_socket_path() == "/run/xenstored/socket"
    monkeypatch.setenv("XENSTORED_RUNDIR", str(tmp_path))
    assert default_socket_path() == str(tmp_path / "socket")
    monkeypatch.setenv("XENSTORED_PATH", "/elsewhere/sock")
    assert default_socket_path() == "/elsewhere/sock"
    with pytest.raises(FileNotFoundError):
        Client()
    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(OSError) as caught:
        Client(regular)
    assert caught.value.errno == errno.ENOTSOCK


def test_default_path_reaches_the_daemon(monkeypatch: pytest.MonkeyPatch, socket_dir: Path) -> None:
    monkeypatch.setenv("XENSTORED_PATH", str(socket_dir / "socket"))
    with Client() as connection:
        assert connection.exists("/")


def test_a_garbage_reply_breaks_the_connection_cleanly(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "sock"))
    listener.listen()

    def answer_with_garbage() -> None:
        peer, _ = listener.accept()
        peer.recv(4096)
        peer.sendall(b"\xff" * 16)
        peer.recv(4096)
        peer.close()

    server = threading.Thread(target=answer_with_garbage)
    server.start()
    with Client(tmp_path / "sock") as connection:
        with pytest.raises(ConnectionError) as caught:
            connection.read("/")
        assert isinstance(caught.value.__cause__, ValueError)
        with pytest.raises(ConnectionError):
            connection.read("/")
    server.join()
    listener.close()


CANNED_REPLIES = {
    MessageType.TRANSACTION_START: b"7\0",
    MessageType.READ: b"value",
    MessageType.DIRECTORY: b"a\0b\0",
    MessageType.GET_PERMS: b"n0\0",
}


class RecordingPeer:
    """A socket that answers like xenstored and records each request it gets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[XsMessage] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                peer, _ = self._listener.accept()
            except OSError:
                return
            reader = xs_wire.MessageReader()
            with peer:
                while data := peer.recv(65536):
                    for message in reader.feed(data):
                        assert isinstance(message, XsMessage)
                        self.requests.append(message)
                        payload = CANNED_REPLIES.get(MessageType(message.type), b"OK\0")
                        answer = XsMessage(message.type, message.req_id, message.tx_id, payload)
                        peer.sendall(answer.encode())

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join()


def test_requests_are_byte_identical_to_libxenstore_s(tmp_path: Path) -> None:
    """The C xenstore-* tools (libxenstore) and our client must send the same requests."""
    tools = Path("/usr/bin/xenstore-write")
    if not tools.exists():
        pytest.fail("xenstore-utils missing: run `make test`, which installs it")
    peer = RecordingPeer(tmp_path / "sock")
    env = {"XENSTORED_PATH": str(peer.path), "PATH": "/usr/bin:/bin"}
    try:
        cases: list[tuple[list[str], Callable[[Client], object]]] = [
            (["xenstore-write", "/p/q", "v a l"], lambda c: c.write("/p/q", "v a l")),
            (["xenstore-read", "/p"], lambda c: c.read("/p")),
            (["xenstore-list", "/p"], lambda c: c.transact(lambda t: t.ls("/p"))),
            (["xenstore-rm", "/p"], lambda c: c.transact(lambda t: t.rm("/p"))),
            (
                ["xenstore-chmod", "/p", "w3", "r5", "b0", "n7"],
                lambda c: c.transact(
                    lambda t: t.set_permissions(
                        "/p",
                        [
                            Permission(3, Access.WRITE),
                            Permission(5, Access.READ),
                            Permission(0, Access.READ | Access.WRITE),
                            Permission(7, Access.NONE),
                        ],
                    )
                ),
            ),
        ]
        for command, ours in cases:
            peer.requests.clear()
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=PATIENCE)
            theirs = [(m.type, m.tx_id, m.payload) for m in peer.requests]
            peer.requests.clear()
            with Client(peer.path) as connection:
                ours(connection)
            assert [(m.type, m.tx_id, m.payload) for m in peer.requests] == theirs, command
    finally:
        peer.close()


# asyncio flavour


async def next_async_event(watch: AsyncWatch) -> WatchEvent:
    async with asyncio.timeout(30):
        return await anext(watch)


def test_async_basic_operations(socket_dir: Path, base: str) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(socket_dir / "socket") as aclient:
            await aclient.write(f"{base}/a", "1")
            await aclient.mkdir(f"{base}/d")
            assert await aclient.read(f"{base}/a") == b"1"
            assert sorted(await aclient.ls(base)) == ["a", "d"]
            assert await aclient.exists(f"{base}/d")
            await aclient.rm(f"{base}/d")
            assert not await aclient.exists(f"{base}/d")
            with pytest.raises(FileNotFoundError):
                await aclient.read(f"{base}/d")
            perms = [Permission(0, Access.READ), Permission(3, Access.WRITE)]
            await aclient.set_permissions(f"{base}/a", perms)
            assert await aclient.get_permissions(f"{base}/a") == perms
            # Many requests in flight at once on one connection.
            await aclient.write(f"{base}/b", "2")
            reads = [aclient.read(f"{base}/{'ab'[n % 2]}") for n in range(100)]
            assert await asyncio.gather(*reads) == [b"1", b"2"] * 50
            # A cancelled call's reply is dropped, not handed to the next caller.
            cancelled = asyncio.create_task(aclient.read(f"{base}/a"))
            await asyncio.sleep(0)
            cancelled.cancel()
            assert await aclient.read(f"{base}/b") == b"2"
            with pytest.raises(asyncio.CancelledError):
                await cancelled

    asyncio.run(main())


def test_async_watch_iterates_and_ends_on_unwatch(socket_dir: Path, base: str) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(socket_dir / "socket") as aclient:
            watch = await aclient.watch(f"{base}/w", token="tok")
            assert await next_async_event(watch) == WatchEvent(f"{base}/w", "tok")
            await aclient.write(f"{base}/w/x", "1")
            assert await next_async_event(watch) == WatchEvent(f"{base}/w/x", "tok")
            await aclient.rm(f"{base}/w")
            assert await next_async_event(watch) == WatchEvent(f"{base}/w", "tok")
            await watch.unwatch()
            assert [event async for event in watch] == []

            ended: list[WatchEvent] = []
            other = await aclient.watch(base)

            async def consume() -> None:
                async for event in other:
                    ended.append(event)

            consumer = asyncio.create_task(consume())
            await aclient.write(f"{base}/y", "1")
            while len(ended) < 2:
                await asyncio.sleep(0.01)
            await aclient.close()
            async with asyncio.timeout(30):
                await consumer
            assert [event.path for event in ended] == [base, f"{base}/y"]

    asyncio.run(main())


def test_async_racing_increments_and_conflicts(socket_dir: Path, base: str) -> None:
    node = f"{base}/counter"

    async def increment_async(txn: AsyncTransaction) -> None:
        await txn.write(node, str(int(await txn.read(node)) + 1))

    async def main() -> None:
        async with (
            await AsyncClient.connect(socket_dir / "socket") as first,
            await AsyncClient.connect(socket_dir / "socket") as second,
        ):
            await first.write(node, "0")

            async def run_rounds(aclient: AsyncClient) -> None:
                for _ in range(30):
                    await aclient.transact(increment_async, attempts=10_000)

            await asyncio.gather(run_rounds(first), run_rounds(second))
            assert await first.read(node) == b"60"

            txn = await first.start_transaction()
            await txn.read(node)
            await second.write(node, "x")
            await txn.write(node, "y")
            with pytest.raises(BlockingIOError):
                await txn.commit()
            assert await first.read(node) == b"x"

    asyncio.run(main())


def test_async_guest_and_read_only_sockets(client: Client, socket_dir: Path, base: str) -> None:
    domid = next(_domids)
    home = f"/local/domain/{domid}"
    client.mkdir(home)
    client.set_permissions(home, [Permission(domid, Access.NONE)])
    client.write(f"{base}/secret", "s")

    async def main() -> None:
        async with await AsyncClient.connect(socket_dir / "socket") as dom0:
            await dom0.introduce(domid, 1, 2)
            assert await dom0.is_domain_introduced(domid)
            async with await AsyncClient.connect(socket_dir / "domain" / str(domid)) as guest:
                await guest.write("state", "4")
                assert await dom0.read(f"{home}/state") == b"4"
                with pytest.raises(PermissionError):
                    await guest.read(f"{base}/secret")
            async with await AsyncClient.connect(socket_dir / "socket_ro") as reader:
                assert await reader.read(f"{home}/state") == b"4"
                with pytest.raises(PermissionError):
                    await reader.write(f"{home}/state", "5")
            await dom0.release(domid)
            assert not await dom0.is_domain_introduced(domid)

    asyncio.run(main())
