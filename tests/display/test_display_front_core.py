"""The frontend's sans-IO core: request matching, events, and the XenBus state machine."""

import errno
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.display.front_core import (
    ConnectorChannel,
    FlipDone,
    FrontendStateMachine,
    Reply,
    Step,
)
from pvdisplay.wire import displif
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.ring import BackRing, RingFullError, init_shared_ring
from pvdisplay.xenbus import XenbusState

PAGE = 4096


def pages() -> tuple[bytearray, bytearray, BackRing]:
    ring, events = bytearray(PAGE), bytearray(PAGE)
    init_shared_ring(ring)
    return ring, events, BackRing(ring, displif.REQUEST_SIZE)


def answer(back: BackRing, request_id: int, operation: int, status: int = 0) -> None:
    back.take_request()
    back.new_response()[:] = displif.Response(request_id, operation, status).encode()
    back.push_responses()


def load_index(events: bytearray, offset: int) -> int:
    indices = displif.page_indices(events)
    value = indices.load(offset)
    indices.release()
    return value


def store_index(events: bytearray, offset: int, value: int) -> None:
    indices = displif.page_indices(events)
    indices.store(offset, value)
    indices.release()


def post_event(events: bytearray, event_id: int, fb_cookie: int) -> None:
    prod = load_index(events, displif.IN_PROD_OFFSET)
    displif.write_event(events, prod, displif.PageFlipEvent(event_id, fb_cookie).encode())
    store_index(events, displif.IN_PROD_OFFSET, prod + 1)


def test_a_response_completes_only_the_request_with_its_id() -> None:
    ring, events, back = pages()
    channel = ConnectorChannel(ring, events)
    first, _ = channel.send(lambda rid: displif.FbDetach(rid, 7))
    second, _ = channel.send(lambda rid: displif.DbufDestroy(rid, 8))
    assert first != second
    back.take_request()
    back.take_request()
    for rid, op, status in (
        (second, displif.Operation.DBUF_DESTROY, -errno.ENOENT),
        (999, 0x13, 0),
    ):
        back.new_response()[:] = displif.Response(rid, op, status).encode()
    back.push_responses()
    assert channel.receive() == [Reply(second, displif.Operation.DBUF_DESTROY, -errno.ENOENT)]
    assert channel.in_flight == {first}
    assert channel.stray_responses == 1


def test_a_flip_completes_after_its_response_and_its_event_in_either_order() -> None:
    ring, events, back = pages()
    channel = ConnectorChannel(ring, events)
    first, _ = channel.send(lambda rid: displif.PageFlip(rid, 0xAA))
    post_event(events, 0, 0xAA)  # event before the response
    assert channel.receive() == []
    answer(back, first, displif.Operation.PG_FLIP)
    assert channel.receive() == [
        Reply(first, displif.Operation.PG_FLIP, 0),
        FlipDone(first, 0xAA),
    ]
    second, _ = channel.send(lambda rid: displif.PageFlip(rid, 0xBB))
    answer(back, second, displif.Operation.PG_FLIP)
    assert channel.receive() == [Reply(second, displif.Operation.PG_FLIP, 0)]
    post_event(events, 5, 0xBB)  # wrong id (1 expected): skipped, as xen-front does
    assert channel.receive() == []
    post_event(events, 2, 0xBB)
    assert channel.receive() == [FlipDone(second, 0xBB)]
    assert channel.skipped_events == 1
    assert load_index(events, displif.IN_CONS_OFFSET) == 3


def test_a_refused_flip_expects_no_event() -> None:
    ring, events, back = pages()
    channel = ConnectorChannel(ring, events)
    rid, _ = channel.send(lambda r: displif.PageFlip(r, 1))
    answer(back, rid, displif.Operation.PG_FLIP, -errno.ENOENT)
    assert channel.receive() == [Reply(rid, displif.Operation.PG_FLIP, -errno.ENOENT)]
    post_event(events, 0, 1)
    assert channel.receive() == []


def test_a_response_with_another_operation_is_an_io_error() -> None:
    ring, events, back = pages()
    channel = ConnectorChannel(ring, events)
    rid, _ = channel.send(lambda r: displif.FbDetach(r, 1))
    answer(back, rid, displif.Operation.SET_CONFIG)
    assert channel.receive() == [Reply(rid, displif.Operation.FB_DETACH, -errno.EIO)]


def test_impossible_event_indices_are_a_protocol_error() -> None:
    ring, events, _ = pages()
    channel = ConnectorChannel(ring, events)
    store_index(events, displif.IN_PROD_OFFSET, displif.IN_RING_LEN + 1)
    with pytest.raises(ProtocolError):
        channel.receive()


def test_ids_are_reused_only_once_free_and_the_ring_bounds_what_is_in_flight() -> None:
    ring, events, back = pages()
    channel = ConnectorChannel(ring, events)
    ids = [channel.send(lambda r: displif.FbDetach(r, 1))[0] for _ in range(back.size)]
    assert len(set(ids)) == back.size
    with pytest.raises(RingFullError):
        channel.send(lambda r: displif.FbDetach(r, 1))


requests = st.sampled_from(
    [
        lambda r: displif.FbDetach(r, 3),
        lambda r: displif.PageFlip(r, 4),
        lambda r: displif.PageFlip(r, 5),
        lambda r: displif.SetConfig(r, 0, 0, 0, 0, 0, 0),
    ]
)
backend_moves = st.one_of(
    st.tuples(st.just("request"), requests),
    st.tuples(st.just("respond"), st.integers(0, 0xFFFF), st.integers(0, 255), st.integers()),
    st.tuples(st.just("respond_to_oldest"), st.integers(-200, 0)),
    st.tuples(st.just("raw_response"), st.binary(min_size=64, max_size=64)),
    st.tuples(st.just("event"), st.integers(0, 0xFFFF), st.sampled_from([4, 5, 6])),
    st.tuples(st.just("raw_event"), st.binary(min_size=64, max_size=64)),
    st.tuples(st.just("in_prod"), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("forget"), st.integers(0, 40)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(backend_moves, max_size=60))
def test_arbitrary_backend_behaviour_never_crashes_and_matches_by_id(
    moves: list[tuple[Any, ...]],
) -> None:
    ring, events, back = pages()
    channel = ConnectorChannel(ring, events)
    sent: dict[int, int] = {}
    flips: dict[int, int] = {}
    order: list[int] = []
    completed: set[int] = set()
    for move in moves:
        try:
            match move:
                case ("request", build):
                    rid, _ = channel.send(build)
                    request = build(rid)
                    sent[rid] = request.operation
                    order.append(rid)
                    if isinstance(request, displif.PageFlip):
                        flips[rid] = request.fb_cookie
                case ("respond" | "respond_to_oldest" | "raw_response", *fields):
                    if back.take_request() is None:
                        continue
                    if move[0] == "raw_response":
                        slot = fields[0]
                    elif move[0] == "respond":
                        rid, op, status = fields
                        slot = struct.pack(
                            "<HBxi56x", rid, op, max(-(2**31), min(status, 2**31 - 1))
                        )
                    else:
                        pending = [r for r in order if r in channel.in_flight]
                        if not pending:
                            continue
                        slot = displif.Response(pending[0], sent[pending[0]], fields[0]).encode()
                    back.new_response()[:] = slot
                    back.push_responses()
                case ("event", event_id, cookie):
                    post_event(events, event_id, cookie)
                case ("raw_event", raw):
                    prod = load_index(events, displif.IN_PROD_OFFSET)
                    offset = displif.in_ring_slot_offset(prod)
                    events[offset : offset + 64] = raw
                    store_index(events, displif.IN_PROD_OFFSET, prod + 1)
                case ("in_prod", value):
                    store_index(events, displif.IN_PROD_OFFSET, value)
                case ("forget", index):
                    if order:
                        channel.forget(order[index % len(order)])
            in_flight_before = channel.in_flight
            outcomes = channel.receive()
        except (ProtocolError, RingFullError):
            return  # the adapter drops a backend that breaks the ring protocol
        for outcome in outcomes:
            if isinstance(outcome, Reply):
                assert outcome.request_id in in_flight_before
                assert outcome.operation == sent[outcome.request_id]
                assert outcome.request_id not in completed
                completed.add(outcome.request_id)
            else:
                assert flips[outcome.request_id] == outcome.fb_cookie
                assert outcome.request_id in completed


# ------------------------------------------------------------------- state machine

S = XenbusState


def current(machine: FrontendStateMachine) -> XenbusState:
    return machine.state


def test_normal_flow_follows_the_displif_diagram() -> None:
    machine = FrontendStateMachine()
    assert machine.backend_changed(S.INITIALISING) == []
    assert machine.backend_changed(S.INIT_WAIT) == [Step.PUBLISH]
    assert current(machine) == S.INITIALISED
    assert machine.backend_changed(S.CONNECTED) == [Step.CONNECT]
    assert current(machine) == S.CONNECTED


def test_backend_loss_waits_for_clients_then_reconnects() -> None:
    machine = FrontendStateMachine()
    machine.backend_changed(S.INIT_WAIT)
    machine.backend_changed(S.CONNECTED)
    machine.client_added()
    assert machine.connection_lost() == [Step.RECONFIGURE]
    assert current(machine) == S.RECONFIGURING
    with pytest.raises(ValueError):
        machine.client_added()
    assert machine.backend_changed(S.INIT_WAIT) == []  # restarted, but a client holds on
    assert machine.client_removed() == [Step.REINITIALISE, Step.PUBLISH]
    assert current(machine) == S.INITIALISED


def test_backend_loss_without_clients_goes_straight_to_initialising() -> None:
    machine = FrontendStateMachine()
    machine.backend_changed(S.INIT_WAIT)
    machine.backend_changed(S.CONNECTED)
    assert machine.backend_changed(S.CLOSED) == [Step.RECONFIGURE, Step.REINITIALISE]
    assert current(machine) == S.INITIALISING
    assert machine.backend_changed(S.CONNECTED) == []  # stale: not what we wait for
    assert machine.backend_changed(S.INIT_WAIT) == [Step.PUBLISH]


inputs = st.one_of(
    st.tuples(st.just("backend"), st.sampled_from([None, *XenbusState])),
    st.just(("lost",)),
    st.just(("add",)),
    st.just(("remove",)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(inputs, max_size=40))
def test_any_input_sequence_keeps_the_machine_consistent(sequence: list[tuple[Any, ...]]) -> None:
    machine = FrontendStateMachine()
    for item in sequence:
        before = machine.state
        match item:
            case ("backend", state):
                steps = machine.backend_changed(state)
            case ("lost",):
                steps = machine.connection_lost()
            case ("add",):
                if not machine.accepts_clients:
                    with pytest.raises(ValueError):
                        machine.client_added()
                    continue
                machine.client_added()
                steps = []
            case ("remove",):
                if machine.clients == 0:
                    continue
                steps = machine.client_removed()
        if Step.CONNECT in steps:
            assert before == S.INITIALISED and machine.backend == S.CONNECTED
        if Step.PUBLISH in steps:
            assert machine.backend == S.INIT_WAIT and machine.state == S.INITIALISED
        if Step.REINITIALISE in steps:
            assert machine.clients == 0
        if Step.RECONFIGURE in steps:
            assert before in (S.INITIALISED, S.CONNECTED)
        if machine.state == S.RECONFIGURING:
            assert machine.clients > 0
        assert machine.state in (
            S.INITIALISING,
            S.INITIALISED,
            S.CONNECTED,
            S.RECONFIGURING,
        )
