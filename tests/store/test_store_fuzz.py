"""Random byte streams from many connections through the framer into the engine.

Nothing a client sends may crash the engine, go unanswered, corrupt the tree,
or get a guest past the permissions: guests never change what they may not
write, never read the secret, and never own more nodes than their quota.
"""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.store import tree
from pvdisplay.store.engine import Close, Connection, Engine, Send
from pvdisplay.store.tree import Quotas
from pvdisplay.wire.xs_wire import HEADER, MessageReader, MessageType, Oversized, XsMessage

SECRET = b"\x01-top-secret-\xfe"
QUOTAS = Quotas(nodes=8, watches=4, transactions=2, node_size=256, transaction_nodes=16)
GUEST_WRITABLE = ("/shared", "/local/domain/5", "/local/domain/6")

interesting_paths = st.sampled_from(
    [
        b"/",
        b"",
        b"/shared",
        b"/shared/a",
        b"/shared/a/b",
        b"/secret",
        b"/secret/x",
        b"/backend",
        b"/backend/vdispl",
        b"/local/domain/5",
        b"/local/domain/6/y",
        b"device/z",
        b"@releaseDomain",
        b"@introduceDomain",
        b"/tool",
        b"/a//b",
        b"/\xff",
    ]
)
path_bytes = st.one_of(
    interesting_paths, interesting_paths, interesting_paths, st.binary(max_size=12)
)
tokens = st.binary(max_size=6).filter(lambda token: b"\0" not in token)
permission_strings = st.lists(
    st.sampled_from([b"n5", b"b5", b"r6", b"w0", b"b0", b"n6", b"x1", b"b99999", b""]),
    max_size=4,
)
T = MessageType
path_requests = st.tuples(
    st.sampled_from([T.READ, T.DIRECTORY, T.GET_PERMS, T.MKDIR, T.RM]),
    path_bytes.map(lambda path: path + b"\0"),
)
write_requests = st.tuples(
    st.just(T.WRITE),
    st.builds(lambda path, value: path + b"\0" + value, path_bytes, st.binary(max_size=48)),
)
watch_requests = st.tuples(
    st.sampled_from([T.WATCH, T.UNWATCH]),
    st.builds(lambda path, token: path + b"\0" + token + b"\0", path_bytes, tokens),
)
permission_requests = st.tuples(
    st.just(T.SET_PERMS),
    st.builds(
        lambda path, listed: path + b"\0" + b"".join(entry + b"\0" for entry in listed),
        path_bytes,
        permission_strings,
    ),
)
other_requests = st.sampled_from(
    [
        (T.TRANSACTION_START, b"\0"),
        (T.TRANSACTION_END, b"T\0"),
        (T.TRANSACTION_END, b"F\0"),
        (T.DIRECTORY_PART, b"/shared\x000\0"),
        (T.DIRECTORY_PART, b"/secret\x000\0"),
        (T.INTRODUCE, b"7\x001\x001\0"),
        (T.RELEASE, b"5\0"),
        (T.RELEASE, b"6\0"),
        (T.SET_TARGET, b"6\x005\0"),
        (T.IS_DOMAIN_INTRODUCED, b"5\0"),
        (T.GET_DOMAIN_PATH, b"5\0"),
        (T.RESUME, b"5\0"),
        (T.RESET_WATCHES, b"\0"),
        (T.CONTROL, b"print\0hi\0"),
        (T.CONTROL, b"log\0on\0"),
    ]
)
garbage_requests = st.tuples(
    st.one_of(st.integers(0, 30), st.just(0xFFFF), st.integers(0, 2**32 - 1)),
    st.binary(max_size=64),
)
requests = st.one_of(
    path_requests,
    write_requests,
    watch_requests,
    permission_requests,
    other_requests,
    garbage_requests,
)
messages = st.builds(
    lambda request, req_id, tx_id: XsMessage(request[0], req_id, tx_id, request[1]).encode(),
    requests,
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 0, 0, 1, 2, 3, 2**32 - 1]),
)
# A header announcing more than 4096 bytes, then that many bytes to skip.
oversized = st.integers(4097, 6000).map(
    lambda size: HEADER.pack(MessageType.WRITE, 1, 0, size) + b"\xaa" * size
)
chunks = st.one_of(
    messages, messages, messages, messages, messages, oversized, st.binary(min_size=1, max_size=40)
)


def setup(engine: Engine) -> dict[str, Connection]:
    dom0 = engine.connect(0)

    def do(kind: MessageType, payload: bytes) -> None:
        (*_, reply) = [
            o
            for o in engine.handle(dom0, XsMessage(kind, 1, 0, payload))
            if isinstance(o, Send) and o.connection is dom0
        ]
        assert reply.message.type == kind, reply

    do(MessageType.INTRODUCE, b"5\x001\x001\0")
    do(MessageType.INTRODUCE, b"6\x001\x001\0")
    do(MessageType.WRITE, b"/shared\0")
    do(MessageType.SET_PERMS, b"/shared\0n0\0b5\0b6\0")
    do(MessageType.WRITE, b"/secret\0" + SECRET)
    do(MessageType.WRITE, b"/backend/vdispl\0")
    do(MessageType.SET_PERMS, b"/backend\0n0\0r5\0")
    return {
        "dom0": dom0,
        "ro": engine.connect(0, read_only=True),
        "guest5": engine.connect(5),
        "guest5-again": engine.connect(5),
        "guest6": engine.connect(6),
    }


def assert_unchanged_but_for_guest_children(
    path: str, before: tree.Node, after: tree.Node | None
) -> None:
    """A guest may add or remove its own writable areas, e.g. delete the home it owns;
    that changes the parent's child list and generation, and nothing else."""
    assert after is not None, f"guest removed {path}"
    assert (after.value, after.permissions) == (before.value, before.permissions), path
    changed_children = set(before.children) ^ set(after.children)
    for child in changed_children:
        child_path = path.rstrip("/") + "/" + child
        assert child_path in GUEST_WRITABLE, f"guest changed {path}: child {child}"
    parents_of_guest_areas = {area.rsplit("/", 1)[0] or "/" for area in GUEST_WRITABLE}
    if path not in parents_of_guest_areas:
        assert after == before, f"guest changed {path}"


def snapshot(store: tree.Store) -> dict[str, tree.Node]:
    nodes = {}
    for path in store.paths():
        node = store.get(path)
        assert node is not None
        nodes[path] = node
    return nodes


def check_structure(store: tree.Store) -> None:
    nodes = snapshot(store)
    owners: Counter[int] = Counter()
    for path, node in nodes.items():
        owners[node.owner] += 1
        for name in node.children:
            assert tree.child_path(path, name) in nodes
        if path != "/" and not path.startswith("@"):
            assert nodes[tree.parent_of(path)].children.count(tree.basename(path)) == 1
    assert all(store.owned(domid) == count for domid, count in owners.items())


def feed(
    engine: Engine, connections: dict[str, Connection], script: list[tuple[str, bytes]]
) -> list[Send]:
    """Run the script; check every framed request gets exactly one reply. Returns all sends."""
    readers = {name: MessageReader() for name in connections}
    closed: set[Connection] = set()
    sent: list[Send] = []
    for name, data in script:
        connection = connections[name]
        for item in readers[name].feed(data):
            outputs = engine.handle(connection, item)
            if connection in closed:
                assert outputs == []
                continue
            closed |= {output.connection for output in outputs if isinstance(output, Close)}
            sent += [output for output in outputs if isinstance(output, Send)]
            header = item.header if isinstance(item, Oversized) else item
            replies = [
                o.message
                for o in outputs
                if isinstance(o, Send) and o.connection is connection and not o.is_event
            ]
            assert len(replies) == 1, (item, outputs)
            assert replies[0].req_id == header.req_id
            assert replies[0].type in (header.type, MessageType.ERROR)
            assert len(replies[0].payload) <= 4096
        check_structure(engine.store)
    return sent


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["dom0", "ro", "guest5", "guest5-again", "guest6"]), chunks),
        min_size=5,
        max_size=80,
    )
)
def test_any_stream_from_anyone_gets_answers_and_keeps_the_tree_whole(
    script: list[tuple[str, bytes]],
) -> None:
    engine = Engine(QUOTAS)
    feed(engine, setup(engine), script)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["ro", "guest5", "guest5-again", "guest6"]), chunks),
        min_size=5,
        max_size=80,
    )
)
def test_guests_never_get_past_the_permissions(script: list[tuple[str, bytes]]) -> None:
    engine = Engine(QUOTAS)
    connections = setup(engine)
    before = snapshot(engine.store)
    sent = feed(engine, connections, script)
    after = snapshot(engine.store)

    guests = {connections["guest5"], connections["guest5-again"], connections["guest6"]}
    for send in sent:
        if send.connection in guests:
            assert SECRET not in send.message.payload
    for path, node in before.items():
        if not any(tree.is_at_or_below(path, area) for area in GUEST_WRITABLE):
            assert_unchanged_but_for_guest_children(path, node, after.get(path))
    for path in after.keys() - before.keys():
        assert any(tree.is_at_or_below(path, area) for area in GUEST_WRITABLE), path
    for domid in (5, 6):
        assert engine.store.owned(domid) <= QUOTAS.nodes
