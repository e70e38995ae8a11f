"""FrontRing/BackRing against a model of ring.h in unbounded integers.

The model counts messages with Python ints that never wrap; the ring keeps RING_IDX
values mod 2**32 starting anywhere, usually just below the wrap. Reference decisions
use the ring.h macro formulas written out here, independently of the implementation.
"""

import errno
import mmap
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.ring import (
    XEN_PAGE_SIZE,
    BackRing,
    FrontRing,
    RingFullError,
    WritableBuffer,
    init_shared_ring,
    ring_size,
)

M = 2**32
HEADER = struct.Struct("=4I")  # req_prod, req_event, rsp_prod, rsp_event

starts = st.one_of(st.integers(M - 40, M - 1), st.integers(M - 600, M - 1), st.integers(0, M - 1))
slot_sizes = st.one_of(st.sampled_from([64, 1000, 2016, 4032]), st.integers(8, 4032))
counts = st.integers(1, 40)


def message(seq: int, slot_size: int, is_response: bool) -> bytes:
    word = (seq | (is_response << 63)).to_bytes(8, "little")
    return (word * (slot_size // 8 + 1))[:slot_size]


def notify_reference(old: int, new: int, event: int) -> bool:
    """RING_PUSH_*_AND_CHECK_NOTIFY: (RING_IDX)(new - event) < (RING_IDX)(new - old)."""
    return (new - event) % M < (new - old) % M


class RingModel(RuleBasedStateMachine):
    """Random interleavings of both ends' operations on one area, checked step by step."""

    page: bytearray
    front: FrontRing
    back: BackRing

    @initialize(start=starts, slot_size=slot_sizes)
    def attach(self, start: int, slot_size: int) -> None:
        self.page = bytearray(XEN_PAGE_SIZE)
        init_shared_ring(self.page, start)
        self.front = FrontRing(self.page, slot_size, start)
        self.back = BackRing(self.page, slot_size, start)
        self.slot_size = slot_size
        self.size = ring_size(slot_size)
        # Unbounded message counters: produced, published, taken, answered, published,
        # consumed. The RING_IDX of counter n is (start + n) % M.
        self.start = start
        self.requests_made = self.requests_pushed = self.requests_taken = 0
        self.responses_made = self.responses_pushed = self.responses_taken = 0
        self.req_event = self.rsp_event = 1  # relative to start, as SHARED_RING_INIT
        self.back_asleep = self.front_asleep = False

    def idx(self, n: int) -> int:
        return (self.start + n) % M

    # ---- frontend ----

    @rule(n=counts)
    def front_produces(self, n: int) -> None:
        free = self.size - (self.requests_made - self.responses_taken)
        for _ in range(min(n, free)):
            self.front.new_request()[:] = message(self.requests_made, self.slot_size, False)
            self.requests_made += 1
        if n > free:
            with pytest.raises(RingFullError):
                self.front.new_request()

    @rule()
    def front_pushes(self) -> None:
        old, new = self.idx(self.requests_pushed), self.idx(self.requests_made)
        notify = self.front.push_requests()
        assert notify == notify_reference(old, new, self.idx(self.req_event))
        if self.back_asleep and new != old:
            assert notify, "backend asleep but not notified of new requests"
        self.back_asleep &= not notify
        self.requests_pushed = self.requests_made

    @rule(n=counts)
    def front_takes(self, n: int) -> None:
        for _ in range(n):
            response = self.front.take_response()
            if self.responses_taken == self.responses_pushed:
                assert response is None
                return
            assert response == message(self.responses_taken, self.slot_size, True)
            self.responses_taken += 1

    @rule()
    def front_final_check(self) -> None:
        pending = self.responses_pushed > self.responses_taken
        if not pending:
            self.rsp_event = self.responses_taken + 1
        assert self.front.final_check_for_responses() == pending
        self.front_asleep = not pending

    # ---- backend ----

    @rule(n=counts)
    def back_takes(self, n: int) -> None:
        for _ in range(n):
            request = self.back.take_request()
            if self.requests_taken == self.requests_pushed:
                assert request is None
                return
            assert request == message(self.requests_taken, self.slot_size, False)
            self.requests_taken += 1

    @rule(n=counts)
    def back_responds(self, n: int) -> None:
        unanswered = self.requests_taken - self.responses_made
        for _ in range(min(n, unanswered)):
            self.back.new_response()[:] = message(self.responses_made, self.slot_size, True)
            self.responses_made += 1
        if n > unanswered:
            with pytest.raises(RingFullError):
                self.back.new_response()

    @rule()
    def back_pushes(self) -> None:
        old, new = self.idx(self.responses_pushed), self.idx(self.responses_made)
        notify = self.back.push_responses()
        assert notify == notify_reference(old, new, self.idx(self.rsp_event))
        if self.front_asleep and new != old:
            assert notify, "frontend asleep but not notified of new responses"
        self.front_asleep &= not notify
        self.responses_pushed = self.responses_made

    @rule()
    def back_final_check(self) -> None:
        pending = self.requests_pushed > self.requests_taken
        if not pending:
            self.req_event = self.requests_taken + 1
        assert self.back.final_check_for_requests() == pending
        self.back_asleep = not pending

    # ---- what ring.h's macros would say about the same page ----

    @invariant()
    def shared_header_matches_model(self) -> None:
        assert HEADER.unpack_from(self.page) == (
            self.idx(self.requests_pushed),
            self.idx(self.req_event),
            self.idx(self.responses_pushed),
            self.idx(self.rsp_event),
        )

    @invariant()
    def counts_match_macros(self) -> None:
        req_prod, _, rsp_prod, _ = HEADER.unpack_from(self.page)
        front, back, size = self.front, self.back, self.size
        assert front.req_prod_pvt == self.idx(self.requests_made)
        assert front.rsp_cons == self.idx(self.responses_taken)
        assert back.req_cons == self.idx(self.requests_taken)
        assert back.rsp_prod_pvt == self.idx(self.responses_made)
        # RING_FREE_REQUESTS, RING_FULL
        assert front.free_requests == size - (front.req_prod_pvt - front.rsp_cons) % M
        assert front.full == (front.free_requests == 0)
        # RING_HAS_UNCONSUMED_RESPONSES
        assert front.unconsumed_responses() == (rsp_prod - front.rsp_cons) % M
        # RING_HAS_UNCONSUMED_REQUESTS (GNU variant, with the min against free slots)
        unconsumed = min(
            (req_prod - back.req_cons) % M, size - (back.req_cons - back.rsp_prod_pvt) % M
        )
        assert back.unconsumed_requests() == unconsumed
        # RING_REQUEST_CONS_OVERFLOW never holds at a request we could take
        if unconsumed:
            assert (back.req_cons - back.rsp_prod_pvt) % M < size
        assert front.outstanding_requests == self.requests_made - self.responses_taken
        assert back.unanswered_requests == self.requests_taken - self.responses_made


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# ---- impossible producer indices ----

# Rounds of: produce n, push?, take n, respond n, push responses?, take responses n.
Round = tuple[int, bool, int, int, bool, int]
ROUNDS = st.lists(
    st.tuples(counts, st.booleans(), counts, counts, st.booleans(), counts), max_size=12
)
# A forged index: near one end of the honest range, or anything at all.
FORGED = st.one_of(
    st.tuples(st.sampled_from(["low", "high"]), st.integers(-3, 3)),
    st.tuples(st.just("any"), st.integers(0, M - 1)),
)


class HonestPair:
    """Both ends driven honestly; counters are unbounded like the model above."""

    def __init__(self, start: int, slot_size: int) -> None:
        self.page = bytearray(XEN_PAGE_SIZE)
        init_shared_ring(self.page, start)
        self.front = FrontRing(self.page, slot_size, start)
        self.back = BackRing(self.page, slot_size, start)
        self.size = self.front.size
        self.requests_pushed = self.responses_pushed = 0

    def run(self, rounds: list[Round]) -> None:
        front, back = self.front, self.back
        for produce, push, take, respond, push_responses, take_responses in rounds:
            for _ in range(min(produce, front.free_requests)):
                front.new_request()
            if push:
                self.requests_pushed += (front.req_prod_pvt - self.page_index(0)) % M
                front.push_requests()
            for _ in range(take):
                back.take_request()
            for _ in range(min(respond, back.unanswered_requests)):
                back.new_response()
            if push_responses:
                self.responses_pushed += (back.rsp_prod_pvt - self.page_index(8)) % M
                back.push_responses()
            for _ in range(take_responses):
                front.take_response()

    def page_index(self, offset: int) -> int:
        (value,) = struct.unpack_from("=I", self.page, offset)
        return int(value)


def forged_value(low: int, high: int, forged: tuple[str, int]) -> int:
    kind, value = forged
    base = {"low": low, "high": high, "any": 0}[kind]
    return (base + value) % M


def assert_refused_for_good(call: Callable[[], object]) -> None:
    with pytest.raises(ProtocolError) as caught:
        call()
    assert caught.value.errno == errno.EIO


@settings(max_examples=300, deadline=None)
@given(start=starts, slot_size=slot_sizes, rounds=ROUNDS, forged=FORGED)
def test_backend_refuses_every_impossible_req_prod(
    start: int, slot_size: int, rounds: list[Round], forged: tuple[str, int]
) -> None:
    pair = HonestPair(start, slot_size)
    pair.run(rounds)
    back = pair.back
    back.unconsumed_requests()  # the backend has now seen everything published
    # An honest frontend only moves req_prod forward, and at most one ring beyond the
    # responses it could have consumed.
    low = start + pair.requests_pushed
    high = start + pair.responses_pushed + pair.size
    possible = {n % M for n in range(low, high + 1)}
    value = forged_value(low, high, forged)
    honest = pair.page_index(0)
    struct.pack_into("=I", pair.page, 0, value)
    if value in possible:
        back.unconsumed_requests()
        return
    # ring.h's own check is weaker: whatever it flags, we flag too.
    macro_overflow = (value - back.rsp_prod_pvt) % M > pair.size
    assert macro_overflow <= (value not in possible)
    assert_refused_for_good(back.unconsumed_requests)
    struct.pack_into("=I", pair.page, 0, honest)
    assert_refused_for_good(back.take_request)
    assert_refused_for_good(back.final_check_for_requests)


@settings(max_examples=300, deadline=None)
@given(start=starts, slot_size=slot_sizes, rounds=ROUNDS, forged=FORGED)
def test_frontend_refuses_every_impossible_rsp_prod(
    start: int, slot_size: int, rounds: list[Round], forged: tuple[str, int]
) -> None:
    pair = HonestPair(start, slot_size)
    pair.run(rounds)
    front = pair.front
    front.unconsumed_responses()
    # An honest backend only moves rsp_prod forward, answering published requests.
    low = start + pair.responses_pushed
    high = start + pair.requests_pushed
    possible = {n % M for n in range(low, high + 1)}
    value = forged_value(low, high, forged)
    honest = pair.page_index(8)
    struct.pack_into("=I", pair.page, 8, value)
    if value in possible:
        front.unconsumed_responses()
        return
    macro_overflow = (value - front.rsp_cons) % M > pair.size  # RING_RESPONSE_PROD_OVERFLOW
    assert macro_overflow <= (value not in possible)
    assert_refused_for_good(front.unconsumed_responses)
    struct.pack_into("=I", pair.page, 8, honest)
    assert_refused_for_good(front.take_response)
    assert_refused_for_good(front.final_check_for_responses)


# ---- examples ----


def test_displif_ring_has_32_slots() -> None:
    assert ring_size(64) == 32
    assert ring_size(64, 2 * XEN_PAGE_SIZE) == 64


@pytest.mark.parametrize(("slot_size", "area_size"), [(0, 4096), (4033, 4096), (8, 64)])
def test_ring_without_a_slot_is_refused(slot_size: int, area_size: int) -> None:
    with pytest.raises(ValueError):
        ring_size(slot_size, area_size)


def test_shared_ring_init_bytes() -> None:
    page = bytearray(b"\xff" * XEN_PAGE_SIZE)
    init_shared_ring(page)
    assert page[:64] == bytes(4) + (1).to_bytes(4, "little") + bytes(4) + (1).to_bytes(
        4, "little"
    ) + bytes(48)
    assert page[64:] == b"\xff" * (XEN_PAGE_SIZE - 64)


def areas() -> list[Callable[[], WritableBuffer]]:
    return [
        lambda: bytearray(XEN_PAGE_SIZE),
        lambda: memoryview(bytearray(2 * XEN_PAGE_SIZE))[XEN_PAGE_SIZE:],
        lambda: mmap.mmap(-1, XEN_PAGE_SIZE),
    ]


@pytest.mark.parametrize("make_area", areas(), ids=["bytearray", "memoryview", "mmap"])
def test_round_trip_on_any_writable_buffer(make_area: Callable[[], WritableBuffer]) -> None:
    area = make_area()
    init_shared_ring(area, M - 1)
    with FrontRing(area, 64, M - 1) as front, BackRing(area, 64, M - 1) as back:
        front.new_request()[:8] = b"request!"
        assert front.push_requests()  # the backend's req_event starts at the first slot
        request = back.take_request()
        assert request == b"request!" + bytes(56)
        assert back.take_request() is None
        back.new_response()[:] = request[::-1]
        assert back.push_responses()
        assert front.take_response() == request[::-1]
        assert (front.req_prod_pvt, back.rsp_prod_pvt) == (0, 0)  # wrapped
    if isinstance(area, mmap.mmap):
        area.close()  # possible only because the rings released the mapping


def test_new_slot_is_zeroed() -> None:
    page = bytearray(b"\xee" * XEN_PAGE_SIZE)
    init_shared_ring(page)
    assert FrontRing(page, 64).new_request() == bytes(64)


def test_taken_request_is_a_copy() -> None:
    page = bytearray(XEN_PAGE_SIZE)
    init_shared_ring(page)
    front, back = FrontRing(page, 64), BackRing(page, 64)
    slot = front.new_request()
    slot[:4] = b"good"
    front.push_requests()
    request = back.take_request()
    slot[:4] = b"evil"  # the frontend rewrites the slot after the backend took it
    assert request is not None and request[:4] == b"good"


def test_full_front_and_answered_back_refuse_new_slots() -> None:
    page = bytearray(XEN_PAGE_SIZE)
    init_shared_ring(page)
    front, back = FrontRing(page, 2016), BackRing(page, 2016)
    front.new_request()
    front.new_request()
    assert front.full
    with pytest.raises(RingFullError):
        front.new_request()
    with pytest.raises(RingFullError):
        back.new_response()


def test_released_ring_refuses_use() -> None:
    page = bytearray(XEN_PAGE_SIZE)
    init_shared_ring(page)
    front = FrontRing(page, 64)
    front.release()
    with pytest.raises(ValueError, match="released"):
        front.push_requests()
    page.extend(b"x")  # the bytearray is no longer pinned


def test_read_only_and_misaligned_areas_are_refused() -> None:
    with pytest.raises(TypeError):
        FrontRing(memoryview(bytes(XEN_PAGE_SIZE)), 64)
    with pytest.raises(ValueError, match="aligned"):
        FrontRing(memoryview(bytearray(XEN_PAGE_SIZE + 1))[1:], 64)
