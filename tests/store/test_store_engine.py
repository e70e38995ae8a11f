"""The sans-IO xenstored engine, message by message, against xenstored's wire behaviour."""

import errno

import pytest

from pvdisplay.store.engine import (
    Close,
    Connection,
    DomainIntroduced,
    DomainReleased,
    Engine,
    Output,
    Send,
)
from pvdisplay.store.tree import Quotas, StoreError
from pvdisplay.wire.xs_wire import (
    Header,
    MessageType,
    Oversized,
    XsMessage,
    errno_from_error_payload,
    join_strings,
)

T = MessageType


def z(*parts: str | bytes) -> bytes:
    """NUL-terminated strings, the usual payload shape."""
    return join_strings(*parts)


class Peer:
    """One connection to the engine, speaking whole messages."""

    def __init__(self, engine: Engine, domid: int = 0, read_only: bool = False) -> None:
        self.engine = engine
        self.connection: Connection = engine.connect(domid, read_only=read_only)
        self.req_id = 100
        self.outputs: list[Output] = []

    def send(self, kind: int, payload: bytes, tx_id: int = 0) -> list[Output]:
        self.req_id += 1
        self.outputs = self.engine.handle(
            self.connection, XsMessage(kind, self.req_id, tx_id, payload)
        )
        return self.outputs

    def call(self, kind: int, payload: bytes, tx_id: int = 0) -> XsMessage:
        outputs = self.send(kind, payload, tx_id)
        replies = [
            output.message
            for output in outputs
            if isinstance(output, Send)
            and output.connection is self.connection
            and not output.is_event
        ]
        assert len(replies) == 1, outputs
        (reply,) = replies
        assert (reply.req_id, reply.tx_id) == (self.req_id, tx_id)
        return reply

    def ok(self, kind: int, payload: bytes, tx_id: int = 0) -> bytes:
        reply = self.call(kind, payload, tx_id)
        assert reply.type == kind, f"{kind!r} failed: {reply.payload!r}"
        return reply.payload

    def fails(self, kind: int, payload: bytes, tx_id: int = 0) -> int:
        reply = self.call(kind, payload, tx_id)
        assert reply.type == T.ERROR, f"{kind!r} succeeded: {reply.payload!r}"
        return errno_from_error_payload(reply.payload)

    def events(self, outputs: list[Output] | None = None) -> list[tuple[bytes, bytes]]:
        """(path, token) of the watch events this connection got from the last request."""
        found = []
        for output in self.outputs if outputs is None else outputs:
            if (
                isinstance(output, Send)
                and output.connection is self.connection
                and output.is_event
            ):
                path, token, rest = output.message.payload.split(b"\0")
                assert rest == b"" and output.message.req_id == output.message.tx_id == 0
                found.append((path, token))
        return found


@pytest.fixture
def engine() -> Engine:
    return Engine(Quotas(nodes=20, watches=3, transactions=2, connections=2, node_size=300))


@pytest.fixture
def dom0(engine: Engine) -> Peer:
    return Peer(engine)


def introduce(dom0: Peer, domid: int) -> list[Output]:
    dom0.ok(T.INTRODUCE, z(str(domid), "4096", "7"))
    return dom0.outputs


@pytest.fixture
def guest(engine: Engine, dom0: Peer) -> Peer:
    introduce(dom0, 5)
    dom0.ok(T.WRITE, b"/shared\0")
    dom0.ok(T.SET_PERMS, z("/shared", "n0", "b5"))
    dom0.ok(T.WRITE, b"/secret\0hidden")
    return Peer(engine, 5)


class TestWireFormats:
    def test_write_read_and_ok(self, dom0: Peer) -> None:
        assert dom0.ok(T.WRITE, b"/a/b\0val\0ue") == b"OK\0"
        assert dom0.ok(T.READ, z("/a/b")) == b"val\0ue"
        assert dom0.ok(T.READ, z("/a")) == b""
        assert dom0.ok(T.MKDIR, z("/a/c")) == b"OK\0"

    def test_directory_lists_nul_terminated_names(self, dom0: Peer) -> None:
        dom0.ok(T.WRITE, b"/d/x\0")
        dom0.ok(T.WRITE, b"/d/y\0")
        assert dom0.ok(T.DIRECTORY, z("/d")) == b"x\0y\0"
        assert dom0.ok(T.DIRECTORY, z("/d/x")) == b""

    def test_directory_part_pages_what_directory_cannot_send(self, dom0: Peer) -> None:
        names = [f"child-{index:04d}-{'x' * 12}" for index in range(300)]
        for name in names:
            dom0.ok(T.MKDIR, z(f"/big/{name}"))
        assert dom0.fails(T.DIRECTORY, z("/big")) == errno.E2BIG
        # What libxenstore's xs_directory_part() does.
        listing, offset, generation = b"", 0, None
        while True:
            reply = dom0.ok(T.DIRECTORY_PART, z("/big", str(offset)))
            assert len(reply) <= 4096
            gen, _, chunk = reply.partition(b"\0")
            assert generation in (None, gen)
            generation = gen
            listing += chunk
            offset += len(chunk)
            if chunk.endswith(b"\0\0") or chunk == b"\0":
                break
        assert listing[:-1].split(b"\0")[:-1] == [name.encode() for name in names]
        assert dom0.ok(T.DIRECTORY_PART, z("/big", "999999")) == generation + b"\0\0"

    def test_directory_part_generation_changes_with_the_children(self, dom0: Peer) -> None:
        dom0.ok(T.MKDIR, z("/g/a"))
        before = dom0.ok(T.DIRECTORY_PART, z("/g", "0"))
        assert before.endswith(b"\0a\0\0")
        dom0.ok(T.MKDIR, z("/g/b"))
        after = dom0.ok(T.DIRECTORY_PART, z("/g", "0"))
        assert after.partition(b"\0")[0] != before.partition(b"\0")[0]

    def test_permissions(self, dom0: Peer) -> None:
        dom0.ok(T.WRITE, b"/p\0")
        assert dom0.ok(T.GET_PERMS, z("/p")) == b"n0\0"
        assert dom0.ok(T.SET_PERMS, z("/p", "r3", "b7", "w9")) == b"OK\0"
        assert dom0.ok(T.GET_PERMS, z("/p")) == b"r3\0b7\0w9\0"
        assert dom0.ok(T.GET_PERMS, z("@introduceDomain")) == b"n0\0"

    def test_relative_paths_are_under_the_callers_home(self, dom0: Peer, guest: Peer) -> None:
        dom0.ok(T.WRITE, b"rel\0dom0")
        assert dom0.ok(T.READ, z("/local/domain/0/rel")) == b"dom0"
        guest.ok(T.WRITE, b"device/x\0guest")
        assert dom0.ok(T.READ, z("/local/domain/5/device/x")) == b"guest"

    def test_domain_queries(self, dom0: Peer) -> None:
        assert dom0.ok(T.GET_DOMAIN_PATH, z("12")) == b"/local/domain/12\0"
        assert dom0.ok(T.IS_DOMAIN_INTRODUCED, z("12")) == b"F\0"
        introduce(dom0, 12)
        assert dom0.ok(T.IS_DOMAIN_INTRODUCED, z("12")) == b"T\0"
        assert dom0.ok(T.IS_DOMAIN_INTRODUCED, z("0")) == b"T\0"


class TestMalformedRequests:
    @pytest.mark.parametrize(
        ("kind", "payload", "tx_id", "number"),
        [
            (20, z("/"), 0, errno.ENOSYS),
            (23, z("/"), 0, errno.ENOSYS),
            (0xFFFF, b"", 0, errno.ENOSYS),
            (T.WATCH_EVENT, z("/", "t"), 0, errno.ENOSYS),
            (T.ERROR, z("EINVAL"), 0, errno.ENOSYS),
            (T.READ, b"/tool", 0, errno.EINVAL),
            (T.READ, b"", 0, errno.EINVAL),
            (T.READ, z("/tool", "/tool"), 0, errno.EINVAL),
            (T.READ, z("/tool"), 77, errno.ENOENT),
            (T.READ, z(b"/caf\xc3\xa9"), 0, errno.EINVAL),
            (T.READ, z(b"/\xff\xfe"), 0, errno.EINVAL),
            (T.READ, z("/" + "a" * 3072), 0, errno.EINVAL),
            (T.READ, z("/tool/"), 0, errno.EINVAL),
            (T.WRITE, b"/no-nul", 0, errno.EINVAL),
            (T.WRITE, b"@releaseDomain\0x", 0, errno.EINVAL),
            (T.SET_PERMS, z("/tool"), 0, errno.EINVAL),
            (T.SET_PERMS, z("/tool", "q0"), 0, errno.EINVAL),
            (T.WATCH, z("/tool"), 0, errno.EINVAL),
            (T.WATCH, z("/tool", "a", "b"), 0, errno.EINVAL),
            (T.TRANSACTION_END, z("X"), 0, errno.EINVAL),
            (T.TRANSACTION_END, z("T"), 0, errno.ENOENT),
            (T.DIRECTORY_PART, z("/tool"), 0, errno.EINVAL),
            (T.DIRECTORY_PART, z("/tool", "-1"), 0, errno.EINVAL),
            (T.INTRODUCE, z("0", "1", "1"), 0, errno.EINVAL),
            (T.INTRODUCE, z("x", "1", "1"), 0, errno.EINVAL),
            (T.INTRODUCE, z("3", "1", "0"), 0, errno.EINVAL),
            (T.INTRODUCE, z("3", "1"), 0, errno.EINVAL),
            (T.RELEASE, z("0"), 0, errno.EINVAL),
            (T.RELEASE, z("44"), 0, errno.ENOENT),
            (T.GET_DOMAIN_PATH, z("65536"), 0, errno.EINVAL),
            (T.CONTROL, b"", 0, errno.EINVAL),
            (T.CONTROL, z("reboot"), 0, errno.EINVAL),
        ],
    )
    def test_error_reply(
        self, dom0: Peer, kind: int, payload: bytes, tx_id: int, number: int
    ) -> None:
        assert dom0.fails(kind, payload, tx_id) == number

    def test_oversized_header_gets_e2big_with_its_ids(self, engine: Engine, dom0: Peer) -> None:
        (output,) = engine.handle(dom0.connection, Oversized(Header(T.WRITE, 9, 4, 5000)))
        assert isinstance(output, Send)
        assert output.message == XsMessage(T.ERROR, 9, 4, b"E2BIG\0")

    def test_errors_change_nothing_and_the_connection_goes_on(self, dom0: Peer) -> None:
        dom0.fails(T.WRITE, b"/bad//path\0x")
        dom0.ok(T.WRITE, b"/fine\0x")
        assert dom0.ok(T.DIRECTORY, z("/")) == b"tool\0fine\0"


class TestWatches:
    def test_registration_fires_once_after_the_reply(self, dom0: Peer) -> None:
        outputs = dom0.send(T.WATCH, z("/w", "tok"))
        kinds = [output.message.type for output in outputs if isinstance(output, Send)]
        assert kinds == [T.WATCH, T.WATCH_EVENT]
        assert dom0.events() == [(b"/w", b"tok")]

    def test_changes_at_or_below_fire(self, engine: Engine, dom0: Peer) -> None:
        watcher = Peer(engine)
        watcher.ok(T.WATCH, z("/w", "t"))
        assert watcher.events(dom0.send(T.WRITE, b"/w/a/b\0")) == [(b"/w/a/b", b"t")]
        assert watcher.events(dom0.send(T.WRITE, b"/w\0v")) == [(b"/w", b"t")]
        assert watcher.events(dom0.send(T.SET_PERMS, z("/w", "r0"))) == [(b"/w", b"t")]
        assert watcher.events(dom0.send(T.WRITE, b"/wx\0")) == []
        assert watcher.events(dom0.send(T.MKDIR, z("/w"))) == []

    def test_removing_an_ancestor_fires_exact_watches(self, engine: Engine, dom0: Peer) -> None:
        dom0.ok(T.WRITE, b"/r/a/b\0")
        watcher = Peer(engine)
        for path in ("/r/a/b", "/r/a", "/r", "/"):
            watcher.ok(T.WATCH, z(path, path))
        assert sorted(watcher.events(dom0.send(T.RM, z("/r/a")))) == [
            (b"/r/a", b"/"),
            (b"/r/a", b"/r"),
            (b"/r/a", b"/r/a"),
            (b"/r/a/b", b"/r/a/b"),
        ]

    def test_events_are_queued_before_the_reply(self, dom0: Peer) -> None:
        dom0.ok(T.WATCH, z("/q", "t"))
        outputs = dom0.send(T.WRITE, b"/q\0")
        assert [output.message.type for output in outputs if isinstance(output, Send)] == [
            T.WATCH_EVENT,
            T.WRITE,
        ]

    def test_relative_watch_hears_relative_paths(self, dom0: Peer, guest: Peer) -> None:
        guest.ok(T.WATCH, z("device", "rel"))
        assert guest.events() == [(b"device", b"rel")]
        assert guest.events(dom0.send(T.WRITE, b"/local/domain/5/device/vkbd\0")) == [
            (b"device/vkbd", b"rel")
        ]

    def test_unwatch_and_reset(self, dom0: Peer) -> None:
        dom0.ok(T.WATCH, z("/u", "a"))
        assert dom0.fails(T.WATCH, z("/u", "a")) == errno.EEXIST
        dom0.ok(T.UNWATCH, z("/u", "a"))
        assert dom0.fails(T.UNWATCH, z("/u", "a")) == errno.ENOENT
        assert dom0.events(dom0.send(T.WRITE, b"/u\0")) == []
        dom0.ok(T.WATCH, z("/u", "b"))
        dom0.ok(T.RESET_WATCHES, b"\0")
        assert dom0.events(dom0.send(T.WRITE, b"/u\0")) == []

    def test_guests_only_hear_what_they_may_read(self, dom0: Peer, guest: Peer) -> None:
        guest.ok(T.WATCH, z("/", "all"))
        assert guest.events(dom0.send(T.WRITE, b"/secret\0changed")) == []
        assert guest.events(dom0.send(T.WRITE, b"/shared/x\0")) == [(b"/shared/x", b"all")]

    def test_domain_events(self, engine: Engine, dom0: Peer, guest: Peer) -> None:
        dom0.ok(T.WATCH, z("@introduceDomain", "in"))
        dom0.ok(T.WATCH, z("@releaseDomain", "out"))
        guest.ok(T.WATCH, z("@releaseDomain", "guest"))
        dom0.ok(T.WATCH, z("/", "root"))
        assert dom0.events(introduce(dom0, 8)) == [
            (b"/local/domain/8", b"root"),
            (b"@introduceDomain", b"in"),
        ]
        assert guest.events(dom0.send(T.RELEASE, z("8"))) == []
        dom0.ok(T.SET_PERMS, z("@releaseDomain", "n0", "r5"))
        introduce(dom0, 8)
        assert guest.events(dom0.send(T.RELEASE, z("8"))) == [(b"@releaseDomain", b"guest")]
        assert (b"@releaseDomain", b"out") in dom0.events()

    def test_watch_ignores_the_transaction_id(self, dom0: Peer) -> None:
        dom0.ok(T.WATCH, z("/i", "t"), tx_id=999)


class TestTransactions:
    def test_ids_are_per_connection(self, engine: Engine, dom0: Peer) -> None:
        other = Peer(engine)
        assert dom0.ok(T.TRANSACTION_START, b"\0") == b"1\0"
        assert other.ok(T.TRANSACTION_START, b"\0") == b"1\0"
        assert dom0.ok(T.TRANSACTION_START, b"\0") == b"2\0"
        assert other.fails(T.READ, z("/tool"), tx_id=2) == errno.ENOENT
        assert dom0.fails(T.TRANSACTION_START, b"\0", tx_id=1) == errno.EBUSY

    def test_isolation_commit_and_events(self, engine: Engine, dom0: Peer) -> None:
        watcher = Peer(engine)
        watcher.ok(T.WATCH, z("/t", "t"))
        tx = int(dom0.ok(T.TRANSACTION_START, b"\0")[:-1])
        assert watcher.events(dom0.send(T.WRITE, b"/t/a\0inside", tx_id=tx)) == []
        assert dom0.ok(T.READ, z("/t/a"), tx_id=tx) == b"inside"
        assert watcher.fails(T.READ, z("/t/a")) == errno.ENOENT
        assert watcher.events(dom0.send(T.TRANSACTION_END, z("T"), tx_id=tx)) == [(b"/t/a", b"t")]
        assert watcher.ok(T.READ, z("/t/a")) == b"inside"
        assert dom0.fails(T.READ, z("/t/a"), tx_id=tx) == errno.ENOENT

    def test_conflict_is_eagain(self, engine: Engine, dom0: Peer) -> None:
        dom0.ok(T.WRITE, b"/c\x000")
        other = Peer(engine)
        tx = int(dom0.ok(T.TRANSACTION_START, b"\0")[:-1])
        dom0.ok(T.READ, z("/c"), tx_id=tx)
        other.ok(T.WRITE, b"/c\x001")
        dom0.ok(T.WRITE, b"/d\0from-tx", tx_id=tx)
        assert dom0.fails(T.TRANSACTION_END, z("T"), tx_id=tx) == errno.EAGAIN
        assert dom0.fails(T.READ, z("/d")) == errno.ENOENT
        assert dom0.fails(T.TRANSACTION_END, z("F"), tx_id=tx) == errno.ENOENT

    def test_abort_discards(self, dom0: Peer) -> None:
        tx = int(dom0.ok(T.TRANSACTION_START, b"\0")[:-1])
        dom0.ok(T.WRITE, b"/gone\0", tx_id=tx)
        dom0.ok(T.TRANSACTION_END, z("F"), tx_id=tx)
        assert dom0.fails(T.READ, z("/gone")) == errno.ENOENT


class TestDomains:
    def test_introduce(self, engine: Engine, dom0: Peer) -> None:
        outputs = introduce(dom0, 3)
        assert outputs.index(DomainIntroduced(3)) < len(outputs) - 1, "socket before reply"
        assert dom0.ok(T.GET_PERMS, z("/local/domain/3")) == b"n3\0"
        assert introduce(dom0, 3) == [
            Send(dom0.connection, XsMessage(T.INTRODUCE, dom0.req_id, 0, b"OK\0"))
        ]
        with pytest.raises(StoreError):
            engine.connect(4)

    def test_guests_may_not_manage_domains(self, guest: Peer) -> None:
        for kind, payload in (
            (T.INTRODUCE, z("9", "1", "1")),
            (T.RELEASE, z("5")),
            (T.RESUME, z("5")),
            (T.SET_TARGET, z("5", "5")),
            (T.IS_DOMAIN_INTRODUCED, z("5")),
            (T.CONTROL, z("print", "x")),
        ):
            assert guest.fails(kind, payload) == errno.EACCES
        assert guest.ok(T.GET_DOMAIN_PATH, z("5")) == b"/local/domain/5\0"

    def test_release(self, engine: Engine, dom0: Peer, guest: Peer) -> None:
        guest.ok(T.WRITE, b"/shared/mine\0")
        guest.ok(T.WATCH, z("/shared", "g"))
        second = Peer(engine, 5)
        dom0.ok(T.RELEASE, z("5"))
        outputs = dom0.outputs
        assert Close(guest.connection) in outputs
        assert Close(second.connection) in outputs
        assert DomainReleased(5) in outputs
        assert guest.events(outputs) == []
        assert dom0.fails(T.READ, z("/shared/mine")) == errno.ENOENT
        assert dom0.fails(T.READ, z("/local/domain/5")) == errno.ENOENT
        assert dom0.ok(T.GET_PERMS, z("/shared")) == b"n0\0"
        assert engine.handle(guest.connection, XsMessage(T.READ, 1, 0, z("/shared"))) == []
        assert dom0.ok(T.IS_DOMAIN_INTRODUCED, z("5")) == b"F\0"

    def test_set_target_gives_the_controller_its_targets_rights(
        self, engine: Engine, dom0: Peer, guest: Peer
    ) -> None:
        introduce(dom0, 9)
        stubdom = Peer(engine, 9)
        assert stubdom.fails(T.WRITE, b"/local/domain/5/x\0") == errno.EACCES
        dom0.ok(T.SET_TARGET, z("9", "5"))
        stubdom.ok(T.WRITE, b"/local/domain/5/x\0")
        stubdom.ok(T.WRITE, b"/shared/y\0")
        assert stubdom.fails(T.READ, z("/secret")) == errno.EACCES
        assert dom0.fails(T.SET_TARGET, z("9", "77")) == errno.ENOENT
        dom0.ok(T.RESUME, z("9"))


class TestReadOnlySocket:
    def test_reads_but_never_writes(self, engine: Engine, dom0: Peer) -> None:
        dom0.ok(T.WRITE, b"/ro\0v")
        reader = Peer(engine, read_only=True)
        assert reader.ok(T.READ, z("/ro")) == b"v"
        assert reader.ok(T.WATCH, z("/ro", "t")) == b"OK\0"
        for kind, payload in (
            (T.WRITE, b"/ro\0x"),
            (T.WRITE, b"/new\0x"),
            (T.MKDIR, z("/new")),
            (T.RM, z("/ro")),
            (T.SET_PERMS, z("/ro", "b0")),
            (T.INTRODUCE, z("9", "1", "1")),
            (T.CONTROL, z("log", "on")),
        ):
            assert reader.fails(kind, payload) == errno.EACCES
        assert reader.ok(T.READ, z("/ro")) == b"v"

    def test_its_connections_share_a_guests_quotas(
        self, engine: Engine, dom0: Peer, guest: Peer
    ) -> None:
        """The socket is group-accessible, so only dom0's read-write socket goes unlimited."""
        readers = [Peer(engine, read_only=True), Peer(engine, read_only=True)]
        with pytest.raises(StoreError) as refused:
            Peer(engine, read_only=True)
        assert refused.value.errno == errno.EBUSY

        readers[0].ok(T.WATCH, z("/secret", "1"))
        readers[1].ok(T.WATCH, z("/secret", "2"))
        readers[1].ok(T.WATCH, z("/secret", "3"))
        assert readers[0].fails(T.WATCH, z("/secret", "4")) == errno.E2BIG
        guest.ok(T.WATCH, z("/shared", "4"))

        readers[0].ok(T.TRANSACTION_START, b"\0")
        readers[1].ok(T.TRANSACTION_START, b"\0")
        assert readers[0].fails(T.TRANSACTION_START, b"\0") == errno.ENOSPC
        guest.ok(T.TRANSACTION_START, b"\0")
        for index in range(5):
            dom0.ok(T.WATCH, z("/secret", str(index)))
            dom0.ok(T.TRANSACTION_START, b"\0")
        assert readers[1].ok(T.READ, z("/secret")) == b"hidden"

        engine.disconnect(readers[1].connection)
        Peer(engine, read_only=True).ok(T.WATCH, z("/secret", "again"))

    def test_its_transactions_touch_a_bounded_number_of_paths(self) -> None:
        engine = Engine(Quotas(transaction_nodes=3))
        reader = Peer(engine, read_only=True)
        dom0 = Peer(engine)
        for name in "abcd":
            dom0.ok(T.WRITE, f"/{name}\0".encode())
        tx_id = int(reader.ok(T.TRANSACTION_START, b"\0")[:-1])
        for name in "abc":
            reader.ok(T.READ, z(f"/{name}"), tx_id)
        assert reader.fails(T.READ, z("/d"), tx_id) == errno.ENOSPC


class TestQuotas:
    def test_watches_are_counted_per_domain(self, engine: Engine, guest: Peer) -> None:
        second = Peer(engine, 5)
        guest.ok(T.WATCH, z("/shared", "1"))
        guest.ok(T.WATCH, z("/shared", "2"))
        second.ok(T.WATCH, z("/shared", "3"))
        assert second.fails(T.WATCH, z("/shared", "4")) == errno.E2BIG
        guest.ok(T.UNWATCH, z("/shared", "1"))
        second.ok(T.WATCH, z("/shared", "4"))

    def test_transactions(self, guest: Peer, dom0: Peer) -> None:
        guest.ok(T.TRANSACTION_START, b"\0")
        guest.ok(T.TRANSACTION_START, b"\0")
        assert guest.fails(T.TRANSACTION_START, b"\0") == errno.ENOSPC
        for _ in range(5):
            dom0.ok(T.TRANSACTION_START, b"\0")

    def test_nodes_size_and_path(self, guest: Peer, dom0: Peer) -> None:
        for index in range(19):
            guest.ok(T.WRITE, f"/shared/n{index}\0".encode())
        assert guest.fails(T.WRITE, b"/shared/one-too-many\0") == errno.ENOSPC
        guest.ok(T.RM, z("/shared/n0"))
        assert guest.fails(T.WRITE, b"/shared/n1\0" + b"x" * 300) == errno.ENOSPC
        dom0.ok(T.WRITE, b"/shared/n1\0" + b"x" * 4000)
        assert guest.fails(T.READ, z("x" * 2049)) == errno.EINVAL

    def test_connections(self, engine: Engine, guest: Peer) -> None:
        Peer(engine, 5)
        with pytest.raises(StoreError):
            Peer(engine, 5)
        engine.disconnect(guest.connection)
        Peer(engine, 5)


class TestControl:
    def test_commands(self, engine: Engine, dom0: Peer) -> None:
        assert dom0.ok(T.CONTROL, z("print", "hello")) == b"OK\0"
        assert b"requests: off" in dom0.ok(T.CONTROL, z("log"))
        dom0.ok(T.CONTROL, z("log", "on"))
        assert engine.trace_requests
        assert b"print" in dom0.ok(T.CONTROL, z("help"))
        assert b"watches          :        3" in dom0.ok(T.CONTROL, z("quota"))
        introduce(dom0, 4)
        assert b"nodes            :        1" in dom0.ok(T.CONTROL, z("quota", "4"))
