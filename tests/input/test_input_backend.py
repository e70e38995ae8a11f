"""The kbdif backend core on a plain page: translation, ring discipline, guest-written indices."""

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.input.backend import BACKLOG, FrontendRequests, InputDevice, VkbdFeatures
from pvdisplay.planes import input_events as ev
from pvdisplay.wire import kbdif
from pvdisplay.wire.errors import ProtocolError

CONFIG = VkbdFeatures(
    "id0",
    1024,
    768,
    abs_pointer=True,
    multi_touch=True,
    mt_width=2048,
    mt_height=1536,
    mt_contacts=2,
)
BOTH = FrontendRequests(abs_pointer=True, multi_touch=True)


def consume(page: bytearray) -> list[kbdif.InEvent]:
    """What a frontend reads: every slot from in_cons to in_prod, then in_cons = in_prod."""
    indices = kbdif.page_indices(page)
    cons = indices.load(kbdif.IN_CONS_OFFSET)
    prod = indices.load(kbdif.IN_PROD_OFFSET)
    events = []
    while cons != prod:
        events.append(kbdif.read_in_event(page, cons))
        cons = (cons + 1) & 0xFFFFFFFF
    indices.store(kbdif.IN_CONS_OFFSET, cons)
    indices.release()
    return events


def test_every_in_event_type_goes_through_the_ring_unchanged() -> None:
    page = bytearray(4096)
    device = InputDevice(CONFIG, BOTH, page)
    every: list[kbdif.InEvent] = [
        kbdif.Key(True, 30),
        kbdif.Motion(-1, 2, 3),
        kbdif.Position(5, 6, -1),
        kbdif.MtDown(0, 1, 2),
        kbdif.MtMotion(0, 3, 4),
        kbdif.MtShape(0, 10, 5),
        kbdif.MtOrient(0, -90),
        kbdif.MtSyn(0),
        kbdif.MtUp(0),
        kbdif.MtSyn(0),
    ]
    assert device.push(every)
    assert consume(page) == every


def test_touch_is_scaled_to_the_touch_surface_and_contacts_get_free_slots() -> None:
    device = InputDevice(CONFIG, BOTH, bytearray(4096))
    events = [ev.TouchDown(100, 512, 384), ev.TouchDown(5, 0, 0), ev.TouchDown(6, 1, 1)]
    assert device.translate(events, 1024, 768) == [
        kbdif.MtDown(0, 1024, 768),
        kbdif.MtDown(1, 0, 0),
        kbdif.MtSyn(1),
    ]
    assert device.ignored == 1  # a third finger on a two-contact surface
    assert device.translate([ev.TouchUp(100), ev.TouchDown(6, 2, 2)], 1024, 768) == [
        kbdif.MtUp(0),
        kbdif.MtDown(0, 4, 4),
        kbdif.MtSyn(0),
    ]


def test_without_requests_the_pointer_is_relative_and_touch_is_ignored() -> None:
    device = InputDevice(CONFIG, FrontendRequests(), bytearray(4096))
    assert not device.absolute and not device.touch
    out = device.translate([ev.PointerMove(10, 10), ev.Wheel(2), ev.TouchDown(0, 1, 1)], 1024, 768)
    assert out == [kbdif.Motion(10, 10, 0), kbdif.Motion(0, 0, -2)]
    assert device.ignored == 1


def test_raw_pointer_spans_0_to_7fff_only_when_offered_and_requested_with_absolute() -> None:
    raw = VkbdFeatures("x", 1024, 768, abs_pointer=True, raw_pointer=True)
    moves = [ev.PointerMove(319, 239), ev.PointerMove(0, 120)]
    device = InputDevice(raw, FrontendRequests(abs_pointer=True, raw_pointer=True), bytearray(4096))
    assert device.translate(moves, 320, 240) == [
        kbdif.Position(0x7FFF, 0x7FFF, 0),
        kbdif.Position(0, 16452, 0),
    ]
    scaled = InputDevice(
        CONFIG, FrontendRequests(abs_pointer=True, raw_pointer=True), bytearray(4096)
    )
    assert scaled.translate(moves, 320, 240) == [
        kbdif.Position(1020, 764, 0),
        kbdif.Position(0, 384, 0),
    ]
    relative = InputDevice(raw, FrontendRequests(raw_pointer=True), bytearray(4096))
    assert relative.translate(moves, 320, 240) == [
        kbdif.Motion(1020, 764, 0),
        kbdif.Motion(-1020, -380, 0),
    ]


def test_disabled_keyboard_and_pointer_drop_what_they_disable() -> None:
    config = VkbdFeatures("x", 10, 10, keyboard=False, pointer=False)
    device = InputDevice(config, FrontendRequests(), bytearray(4096))
    assert (
        device.translate([ev.Key(30, True), ev.Key(0x110, True), ev.PointerMove(1, 1)], 10, 10)
        == []
    )


def test_full_ring_keeps_the_ring_drops_oldest_backlog_and_refills_on_consumption() -> None:
    page = bytearray(4096)
    device = InputDevice(CONFIG, BOTH, page)
    total = kbdif.IN_RING_LEN + BACKLOG + 5
    device.push([kbdif.Key(True, code) for code in range(total)])
    assert (device.dropped, device.backlog) == (5, BACKLOG)
    first = consume(page)
    assert [e.keycode for e in first] == list(range(kbdif.IN_RING_LEN))  # type: ignore[union-attr]
    assert device.flush()
    rest = consume(page)
    assert [e.keycode for e in rest] == list(range(kbdif.IN_RING_LEN + 5, total))  # type: ignore[union-attr]


def test_an_out_event_is_a_protocol_violation() -> None:
    page = bytearray(4096)
    device = InputDevice(CONFIG, BOTH, page)
    struct.pack_into("<I", page, kbdif.OUT_PROD_OFFSET, 1)
    with pytest.raises(ProtocolError):
        device.push([kbdif.Key(True, 1)])


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 0xFFFFFFFF),
    writes=st.lists(
        st.tuples(
            st.sampled_from([0, 4, 8, 12]),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 80),
        ),
        max_size=12,
    ),
)
def test_guest_written_indices_never_crash_or_overrun_the_ring(
    start: int, writes: list[tuple[int, int, int]]
) -> None:
    """Whatever the guest writes into the page header, the backend either keeps the ring
    invariant (in_prod - in_cons <= ring length, out of the slots it may write) or raises
    ProtocolError; it never raises anything else and never writes outside the in ring."""
    page = bytearray(4096)
    struct.pack_into("<II", page, 0, start, start)
    device = InputDevice(CONFIG, BOTH, page)
    guest_prod = False  # the page's in_prod is the guest's scribble, not the backend's
    for offset, value, count in writes:
        struct.pack_into("<I", page, offset, value)
        if offset == kbdif.IN_PROD_OFFSET:
            guest_prod = True
            continue  # the backend owns in_prod and does not re-read it
        before = bytes(page[kbdif.OUT_RING_OFFS :])
        try:
            guest_prod &= not device.push([kbdif.Key(True, n) for n in range(count)])
        except ProtocolError:
            return
        assert bytes(page[kbdif.OUT_RING_OFFS :]) == before
        cons, prod = struct.unpack_from("<II", page, kbdif.IN_CONS_OFFSET)
        assert guest_prod or (prod - cons) & 0xFFFFFFFF <= kbdif.IN_RING_LEN
        assert device.backlog <= BACKLOG


def read_some(page: bytearray, most: int) -> list[kbdif.InEvent]:
    """What a frontend that reads at most `most` slots gets (it skips blank slots)."""
    indices = kbdif.page_indices(page)
    cons = indices.load(kbdif.IN_CONS_OFFSET)
    prod = indices.load(kbdif.IN_PROD_OFFSET)
    events = []
    for _ in range(most):
        if cons == prod:
            break
        with contextlib.suppress(ProtocolError):
            events.append(kbdif.read_in_event(page, cons))
        cons = (cons + 1) & 0xFFFFFFFF
    indices.store(kbdif.IN_CONS_OFFSET, cons)
    indices.release()
    return events


class GuestState:
    """What a guest holds after applying events: keys down, contacts at each MT SYN."""

    def __init__(self) -> None:
        self.keys: set[int] = set()
        self.contacts: dict[int, tuple[int, int]] = {}
        self._pending: dict[int, tuple[int, int]] = {}
        self.pointer: tuple[int, int] | None = None

    def apply(self, events: list[kbdif.InEvent]) -> None:
        for event in events:
            match event:
                case kbdif.Key(pressed=True, keycode=code):
                    self.keys.add(code)
                case kbdif.Key(pressed=False, keycode=code):
                    self.keys.discard(code)
                case kbdif.Position(abs_x=x, abs_y=y):
                    self.pointer = (x, y)
                case kbdif.MtDown(contact_id=c, abs_x=x, abs_y=y):
                    self._pending[c] = (x, y)
                case kbdif.MtMotion(contact_id=c, abs_x=x, abs_y=y):
                    assert c in self._pending, f"motion of contact {c}, which is not down"
                    self._pending[c] = (x, y)
                case kbdif.MtUp(contact_id=c):
                    self._pending.pop(c, None)
                case kbdif.MtSyn():
                    self.contacts = dict(self._pending)


KEYS = (30, 31, 0x110, 0x111)
SAME_SCALE = VkbdFeatures(
    "id0",
    1024,
    768,
    abs_pointer=True,
    multi_touch=True,
    mt_width=1024,
    mt_height=768,
    mt_contacts=3,
)  # positions on the ring are the output's: host and guest compare them directly
output_event = st.one_of(
    st.builds(ev.Key, st.sampled_from(KEYS), st.booleans()),
    st.builds(ev.PointerMove, st.integers(0, 1023), st.integers(0, 767)),
    st.builds(ev.Wheel, st.integers(-2, 2)),
    st.builds(ev.TouchDown, st.integers(0, 3), st.integers(0, 1023), st.integers(0, 767)),
    st.builds(ev.TouchMove, st.integers(0, 3), st.integers(0, 1023), st.integers(0, 767)),
    st.builds(ev.TouchUp, st.integers(0, 3)),
)


@settings(max_examples=400, deadline=None)
@given(
    free=st.integers(0, 12),
    limit=st.integers(0, 20),
    absolute=st.booleans(),
    steps=st.lists(
        st.one_of(
            st.lists(output_event, min_size=1, max_size=40),
            st.integers(0, kbdif.IN_RING_LEN),  # the guest reads this many slots
        ),
        max_size=30,
    ),
    release_at_end=st.booleans(),
)
def test_a_full_queue_never_leaves_a_released_key_or_contact_held(
    free: int,
    limit: int,
    absolute: bool,
    steps: list[list[ev.InputEvent] | int],
    release_at_end: bool,
) -> None:
    """Whatever the output sends and however little the guest reads: once the guest has
    read everything, it holds no key the host released, exactly the contacts the host
    holds where the host has them, the pointer where the host left it, and every event
    the host produced was either read or counted as dropped. The ring starts with only
    `free` slots free (the rest blank, unread) and the backlog holds `limit` events."""
    page = bytearray(4096)
    struct.pack_into("<II", page, kbdif.IN_CONS_OFFSET, 0, kbdif.IN_RING_LEN - free)
    device = InputDevice(SAME_SCALE, FrontendRequests(absolute, True), page, backlog=limit)
    host, guest = GuestState(), GuestState()
    produced = read = 0
    if release_at_end:
        let_go: list[ev.InputEvent] = [ev.Key(code, False) for code in KEYS]
        steps = [*steps, let_go + [ev.TouchUp(c) for c in range(4)]]
    for step in steps:
        if isinstance(step, int):
            events = read_some(page, step)
            guest.apply(events)
            read += len(events)
            device.flush()
            continue
        translated = device.translate(step, 1024, 768)
        host.apply(translated)
        produced += len(translated)
        device.push(translated)
    while True:  # the guest reads everything: the ring, then each refill
        events = read_some(page, kbdif.IN_RING_LEN)
        guest.apply(events)
        read += len(events)
        if not device.flush():
            break
    assert device.backlog == 0
    assert produced == read + device.dropped
    assert guest.keys <= host.keys
    assert guest.contacts == host.contacts
    if absolute:
        assert guest.pointer == host.pointer
    if release_at_end:
        assert not guest.keys and not guest.contacts


def test_a_full_queue_merges_pointer_moves_and_keeps_the_keystroke() -> None:
    page = bytearray(4096)
    struct.pack_into("<II", page, kbdif.IN_CONS_OFFSET, 0, kbdif.IN_RING_LEN)  # ring full
    device = InputDevice(CONFIG, BOTH, page, backlog=3)
    moves = [ev.PointerMove(x, 2 * x) for x in range(20)]
    device.push(device.translate([ev.Key(30, True), *moves, ev.Key(30, False)], 1024, 768))
    assert (device.backlog, device.dropped) == (3, 19)
    read_some(page, kbdif.IN_RING_LEN)
    assert device.flush()
    assert read_some(page, kbdif.IN_RING_LEN) == [
        kbdif.Key(True, 30),
        kbdif.Position(19, 38, 0),
        kbdif.Key(False, 30),
    ]
