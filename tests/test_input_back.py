"""The kbdif backend core on a plain page: translation, ring discipline, guest-written indices."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.input import events as ev
from pvdisplay.input.back import BACKLOG, DeviceConfig, FrontendRequests, InputDevice
from pvdisplay.wire import kbdif
from pvdisplay.wire.errors import ProtocolError

CONFIG = DeviceConfig(
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
    cons = kbdif.read_index(page, kbdif.IN_CONS_OFFSET)
    prod = kbdif.read_index(page, kbdif.IN_PROD_OFFSET)
    events = []
    while cons != prod:
        events.append(kbdif.read_in_event(page, cons))
        cons = (cons + 1) & 0xFFFFFFFF
    kbdif.write_index(page, kbdif.IN_CONS_OFFSET, cons)
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


def test_disabled_keyboard_and_pointer_drop_what_they_disable() -> None:
    config = DeviceConfig("x", 10, 10, keyboard=False, pointer=False)
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
    kbdif.write_index(page, kbdif.OUT_PROD_OFFSET, 1)
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
    for offset, value, count in writes:
        struct.pack_into("<I", page, offset, value)
        if offset == kbdif.IN_PROD_OFFSET:
            continue  # the backend owns in_prod and does not re-read it
        before = bytes(page[kbdif.OUT_RING_OFFS :])
        try:
            device.push([kbdif.Key(True, n) for n in range(count)])
        except ProtocolError:
            return
        assert bytes(page[kbdif.OUT_RING_OFFS :]) == before
        prod = kbdif.read_index(page, kbdif.IN_PROD_OFFSET)
        cons = kbdif.read_index(page, kbdif.IN_CONS_OFFSET)
        assert (prod - cons) & 0xFFFFFFFF <= kbdif.IN_RING_LEN
        assert device.backlog <= BACKLOG
