"""The sans-IO XenStore client core: request bytes, reply routing, watch queues."""

import errno
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.store import protocol
from pvdisplay.store.permissions import Access, Permission
from pvdisplay.store.protocol import ClientProtocol, WatchEvent, XenStoreError
from pvdisplay.wire import ProtocolError, xs_wire
from pvdisplay.wire.xs_wire import MessageType, XsMessage


def reply(req_id: int, payload: bytes, type_: MessageType = MessageType.READ) -> bytes:
    return XsMessage(type_, req_id, 0, payload).encode()


def event(path: str, token: str) -> bytes:
    return XsMessage(MessageType.WATCH_EVENT, 0, 0, xs_wire.join_strings(path, token)).encode()


def test_request_payloads_follow_the_xenstore_wire_format() -> None:
    assert protocol.read("/a/b").payload == b"/a/b\0"
    # XS_WRITE's value follows the path's NUL and carries no terminator.
    assert protocol.write("/a", "v\0w").payload == b"/a\0v\0w"
    assert protocol.write("/a", b"").payload == b"/a\0"
    assert protocol.set_permissions(
        "/a", [Permission(0, Access.NONE), Permission(5, Access.READ | Access.WRITE)]
    ).payload == (b"/a\0n0\0b5\0")
    assert protocol.watch("/a", "tok").payload == b"/a\0tok\0"
    assert protocol.transaction_start().payload == b"\0"
    assert protocol.transaction_end(commit=True).payload == b"T\0"
    assert protocol.transaction_end(commit=False).payload == b"F\0"
    assert protocol.introduce(5, 4660, 7).payload == b"5\0004660\0007\0"
    assert protocol.set_target(6, 5).payload == b"6\0005\0"
    assert protocol.ls("/").type == MessageType.DIRECTORY


def test_requests_the_daemon_could_not_frame_are_refused_before_sending() -> None:
    with pytest.raises(XenStoreError) as nul:
        protocol.read("/a\0/b")
    assert nul.value.errno == errno.EINVAL
    with pytest.raises(XenStoreError) as big:
        protocol.write("/a", b"x" * xs_wire.PAYLOAD_MAX)
    assert big.value.errno == errno.E2BIG
    assert len(protocol.write("/a", b"x" * (xs_wire.PAYLOAD_MAX - 3)).payload) == 4096
    with pytest.raises(XenStoreError):
        protocol.set_permissions("/a", [])


@pytest.mark.parametrize(("name", "number"), xs_wire.ERRORS)
def test_error_replies_raise_the_matching_oserror_subclass(name: str, number: int) -> None:
    request = protocol.read("/some/path")
    with pytest.raises(XenStoreError) as caught:
        request.result(XsMessage(MessageType.ERROR, 1, 0, xs_wire.error_payload(number)))
    assert caught.value.errno == number
    assert caught.value.filename == "/some/path"
    builtin = type(OSError(number, "x"))
    assert isinstance(caught.value, builtin)


def test_exists_turns_only_enoent_into_false() -> None:
    request = protocol.exists("/a")
    assert request.result(XsMessage(MessageType.READ, 1, 0, b"value")) is True
    enoent = XsMessage(MessageType.ERROR, 1, 0, xs_wire.error_payload(errno.ENOENT))
    assert request.result(enoent) is False
    with pytest.raises(PermissionError):
        request.result(XsMessage(MessageType.ERROR, 1, 0, xs_wire.error_payload(errno.EACCES)))


def test_replies_are_decoded_and_checked() -> None:
    assert protocol.ls("/a").result(XsMessage(MessageType.DIRECTORY, 1, 0, b"x\0y\0")) == ["x", "y"]
    assert protocol.ls("/a").result(XsMessage(MessageType.DIRECTORY, 1, 0, b"")) == []
    perms = protocol.get_permissions("/a").result(
        XsMessage(MessageType.GET_PERMS, 1, 0, b"w3\0r0\0")
    )
    assert perms == [Permission(3, Access.WRITE), Permission(0, Access.READ)]
    start = protocol.transaction_start()
    assert start.result(XsMessage(MessageType.TRANSACTION_START, 1, 0, b"42\0")) == 42
    introduced = protocol.is_domain_introduced(3)
    assert introduced.result(XsMessage(MessageType.IS_DOMAIN_INTRODUCED, 1, 0, b"F\0")) is False
    domain_path = protocol.get_domain_path(3)
    assert domain_path.result(
        XsMessage(MessageType.GET_DOMAIN_PATH, 1, 0, b"/local/domain/3\0")
    ) == ("/local/domain/3")
    bad: list[tuple[protocol.Request[Any], XsMessage]] = [
        (protocol.mkdir("/a"), XsMessage(MessageType.MKDIR, 1, 0, b"NO\0")),
        (protocol.mkdir("/a"), XsMessage(MessageType.RM, 1, 0, b"OK\0")),
        (start, XsMessage(MessageType.TRANSACTION_START, 1, 0, b"0\0")),
        (start, XsMessage(MessageType.TRANSACTION_START, 1, 0, b"x\0")),
        (introduced, XsMessage(MessageType.IS_DOMAIN_INTRODUCED, 1, 0, b"yes\0")),
        (protocol.get_permissions("/a"), XsMessage(MessageType.GET_PERMS, 1, 0, b"q1\0")),
        (protocol.get_permissions("/a"), XsMessage(MessageType.GET_PERMS, 1, 0, b"r\0")),
        (protocol.read("/a"), XsMessage(MessageType.ERROR, 1, 0, b"EWHAT\0")),
    ]
    for request, message in bad:
        with pytest.raises(ProtocolError):
            request.result(message)


@given(
    st.sampled_from([Access.NONE, Access.READ, Access.WRITE, Access.READ | Access.WRITE]),
    st.integers(0, 0xFFFF),
)
def test_permission_strings_round_trip(access: Access, domid: int) -> None:
    permission = Permission(domid, access)
    assert Permission.parse(str(permission).encode()) == permission


def test_a_reply_to_a_request_never_sent_is_a_protocol_error() -> None:
    core = ClientProtocol()
    core.send(protocol.read("/a"))
    with pytest.raises(ProtocolError):
        core.receive(reply(999, b"x"))


def test_an_oversized_message_from_the_daemon_is_a_protocol_error() -> None:
    core = ClientProtocol()
    header = xs_wire.Header(MessageType.READ, 1, 0, xs_wire.PAYLOAD_MAX + 1).encode()
    with pytest.raises(ProtocolError):
        core.receive(header)


def test_an_abandoned_request_s_reply_is_dropped_once() -> None:
    core = ClientProtocol()
    req_id, _ = core.send(protocol.read("/a"))
    core.abandon(req_id)
    assert core.receive(reply(req_id, b"late")).replies == []
    assert core.take_reply(req_id) is None
    with pytest.raises(ProtocolError):
        core.receive(reply(req_id, b"twice"))


def test_request_ids_in_flight_are_never_reused() -> None:
    core = ClientProtocol()
    sent = {core.send(protocol.read("/a"))[0] for _ in range(100)}
    assert len(sent) == 100


# A scenario: requests answered in an arbitrary order, watch events for known and
# unknown tokens in between, the whole stream cut into arbitrary chunks.
@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[str, int]], list[int]]:
    count = draw(st.integers(0, 20))
    tokens = ["alpha", "beta", "gamma", "stale"]
    items: list[tuple[str, int]] = [("reply", i) for i in range(count)]
    items += [(draw(st.sampled_from(tokens)), n) for n in range(draw(st.integers(0, 30)))]
    order = draw(st.permutations(items))
    cuts = draw(st.lists(st.integers(0, 4000), max_size=12))
    return count, order, cuts


@settings(max_examples=200)
@given(scenarios())
def test_replies_match_their_requests_and_events_keep_their_order(
    scenario: tuple[int, list[tuple[str, int]], list[int]],
) -> None:
    count, order, cuts = scenario
    core = ClientProtocol()
    for token in ("alpha", "beta", "gamma"):
        core.add_watch(f"/{token}", token)
    req_ids = [core.send(protocol.read(f"/n{i}"))[0] for i in range(count)]
    stream = b""
    sent_events: dict[str, list[WatchEvent]] = {"alpha": [], "beta": [], "gamma": []}
    for kind, number in order:
        if kind == "reply":
            stream += reply(req_ids[number], f"value{number}".encode())
        else:
            stream += event(f"/{kind}/{number}", kind)
            if kind in sent_events:
                sent_events[kind].append(WatchEvent(f"/{kind}/{number}", kind))
    arrived: list[int] = []
    tokens_seen: set[str] = set()
    start = 0
    for cut in [*sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]:
        arrivals = core.receive(stream[start:cut])
        arrived += arrivals.replies
        tokens_seen.update(arrivals.event_tokens)
        start = cut
    assert sorted(arrived) == sorted(req_ids)
    for i, req_id in enumerate(req_ids):
        message = core.take_reply(req_id)
        assert message is not None
        assert message.req_id == req_id
        assert message.payload == f"value{i}".encode()
    for token, expected in sent_events.items():
        taken = []
        while (next_event := core.take_event(token)) is not None:
            taken.append(next_event)
        assert taken == expected
        assert (token in tokens_seen) == bool(expected)
    assert core.take_event("stale") is None


@given(st.integers(1, 8), st.integers(0, 40))
def test_a_full_watch_queue_collapses_into_one_overflow_event(limit: int, count: int) -> None:
    core = ClientProtocol(max_pending_events=limit)
    core.add_watch("/w", "t")
    for n in range(count):
        core.receive(event(f"/w/{n}", "t"))
    taken = []
    while (next_event := core.take_event("t")) is not None:
        taken.append(next_event)
    assert len(taken) <= max(limit, 2)
    if count <= limit:
        assert taken == [WatchEvent(f"/w/{n}", "t") for n in range(count)]
    else:
        # What was dropped is summed up by one event for the watched path,
        # and whatever came after the drop is still there, in order.
        assert taken[0] == WatchEvent("/w", "t", overflowed=True)
        kept = [int(e.path.rsplit("/", 1)[1]) for e in taken[1:]]
        assert kept == list(range(count - len(kept), count))
        assert kept


def test_events_for_a_removed_watch_are_dropped() -> None:
    core = ClientProtocol()
    core.add_watch("/w", "t")
    core.receive(event("/w", "t"))
    core.remove_watch("t")
    assert core.receive(event("/w/x", "t")).event_tokens == []
    assert core.take_event("t") is None
    core.add_watch("/w", "t")
    assert core.take_event("t") is None


def test_a_watch_token_is_unique_per_connection() -> None:
    core = ClientProtocol()
    core.add_watch("/a", "t")
    with pytest.raises(ValueError, match="already in use"):
        core.add_watch("/b", "t")


def test_a_watch_event_without_a_token_is_a_protocol_error() -> None:
    core = ClientProtocol()
    with pytest.raises(ProtocolError):
        core.receive(XsMessage(MessageType.WATCH_EVENT, 0, 0, b"/a\0").encode())
