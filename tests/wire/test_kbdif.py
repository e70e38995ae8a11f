"""kbdif codecs: bytes against a gcc-built C peer, round trips, fuzzing, errors."""

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pvdisplay.wire import kbdif
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.kbdif import (
    EventType,
    InEvent,
    Key,
    Motion,
    MtDown,
    MtEventType,
    MtMotion,
    MtOrient,
    MtShape,
    MtSyn,
    MtUp,
    OutEvent,
    Position,
)

Peer = Callable[[str], str]

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)

in_events: st.SearchStrategy[InEvent] = st.one_of(
    st.builds(Motion, rel_x=i32, rel_y=i32, rel_z=i32),
    st.builds(Key, pressed=st.booleans(), keycode=u32),
    st.builds(Position, abs_x=i32, abs_y=i32, rel_z=i32),
    st.builds(MtDown, contact_id=u8, abs_x=i32, abs_y=i32),
    st.builds(MtMotion, contact_id=u8, abs_x=i32, abs_y=i32),
    st.builds(MtUp, contact_id=u8),
    st.builds(MtSyn, contact_id=u8),
    st.builds(MtShape, contact_id=u8, major=u32, minor=u32),
    st.builds(MtOrient, contact_id=u8, orientation=st.integers(-(2**15), 2**15 - 1)),
)
out_events = st.builds(OutEvent, type=u8, payload=st.binary(min_size=39, max_size=39))


def c_command(event: InEvent | OutEvent) -> str:
    match event:
        case Motion(x, y, z):
            return f"motion {x} {y} {z}"
        case Key(pressed, keycode):
            return f"key {int(pressed)} {keycode}"
        case Position(x, y, z):
            return f"pos {x} {y} {z}"
        case MtDown(contact, x, y):
            return f"mt_down {contact} {x} {y}"
        case MtMotion(contact, x, y):
            return f"mt_motion {contact} {x} {y}"
        case MtUp(contact):
            return f"mt_up {contact}"
        case MtSyn(contact):
            return f"mt_syn {contact}"
        case MtShape(contact, major, minor):
            return f"mt_shape {contact} {major} {minor}"
        case MtOrient(contact, angle):
            return f"mt_orient {contact} {angle}"
        case OutEvent(event_type, payload):
            return f"out {event_type} {payload.hex()}"
    raise AssertionError(event)


@pytest.fixture(scope="module")
def c_peer(compile_c: Callable[..., Path], start_c_peer: Callable[[Path], Peer]) -> Peer:
    return start_c_peer(compile_c("kbdif_codec"))


# ------------------------------------------------------------ against C


@given(in_events)
def test_in_event_bytes_match_c(c_peer: Peer, event: InEvent) -> None:
    c_bytes = bytes.fromhex(c_peer(c_command(event)))
    assert event.encode() == c_bytes
    assert kbdif.decode_in_event(c_bytes) == event


@given(out_events)
def test_out_event_bytes_match_c(c_peer: Peer, event: OutEvent) -> None:
    c_bytes = bytes.fromhex(c_peer(c_command(event)))
    assert event.encode() == c_bytes
    assert kbdif.decode_out_event(c_bytes) == event


@given(u32)
@example(0)
@example(50)
@example(51)
@example(2**32 - 1)
def test_ring_slot_offsets_match_c_macros(c_peer: Peer, index: int) -> None:
    assert kbdif.in_ring_slot_offset(index) == int(c_peer(f"in_ring_ref {index}"))
    assert kbdif.out_ring_slot_offset(index) == int(c_peer(f"out_ring_ref {index}"))


# ----------------------------------------------------------- properties


@given(in_events)
def test_in_event_round_trip(event: InEvent) -> None:
    slot = event.encode()
    assert len(slot) == kbdif.IN_EVENT_SIZE
    assert kbdif.decode_in_event(slot) == event


@given(out_events)
def test_out_event_round_trip(event: OutEvent) -> None:
    assert kbdif.decode_out_event(event.encode()) == event


@given(st.binary(min_size=40, max_size=40), st.sampled_from([1, 3, 4, 5]), st.integers(0, 5))
def test_decoder_reads_exactly_the_layout_fields(junk: bytes, type_: int, mt_type: int) -> None:
    """Decoding any known slot then re-encoding keeps every field byte and zeroes the rest."""
    slot = bytes([type_, mt_type]) + junk[2:]
    event = kbdif.decode_in_event(slot)
    kept = bytearray(40)
    for spec in event.LAYOUT.fields.values():
        kept[spec.offset : spec.offset + spec.size] = slot[spec.offset : spec.offset + spec.size]
    if isinstance(event, Key):
        kept[1] = 1 if slot[1] else 0  # any non-zero `pressed` means pressed
    assert event.encode() == bytes(kept)


@pytest.mark.parametrize("decode", [kbdif.decode_in_event, kbdif.decode_out_event])
@given(st.binary(max_size=90) | st.binary(min_size=40, max_size=40))
def test_fuzz_decoders_raise_only_protocol_error(
    decode: Callable[[bytes], object], data: bytes
) -> None:
    try:
        decode(data)
    except ProtocolError as exc:
        assert exc.errno == errno.EINVAL


# A window that crosses 2**32 can alias slots (see test_wrapped_indices_alias_slots).
unwrapped_start = st.integers(0, 2**32 - kbdif.IN_RING_LEN)


@given(
    st.lists(in_events, min_size=1, max_size=60),
    st.lists(out_events, max_size=30),
    unwrapped_start,
)
def test_shared_page_rings_hold_what_was_written(
    ins: list[InEvent], outs: list[OutEvent], start: int
) -> None:
    page = bytearray(4096)
    ins, outs = ins[-kbdif.IN_RING_LEN :], outs[-kbdif.OUT_RING_LEN :]
    for i, in_event in enumerate(ins):
        kbdif.write_in_event(page, start + i, in_event)
    for i, out_event in enumerate(outs):
        kbdif.write_out_event(page, start + i, out_event)
    indices = kbdif.page_indices(page)
    for offset, value in [
        (kbdif.IN_CONS_OFFSET, start),
        (kbdif.IN_PROD_OFFSET, start + len(ins)),
        (kbdif.OUT_CONS_OFFSET, start),
        (kbdif.OUT_PROD_OFFSET, start + len(outs)),
    ]:
        indices.store(offset, value)
        assert indices.load(offset) == value % 2**32
    indices.release()
    assert page[16 : kbdif.IN_RING_OFFS] == bytes(kbdif.IN_RING_OFFS - 16)
    view = memoryview(page)
    assert [kbdif.read_in_event(view, start + i) for i in range(len(ins))] == ins
    assert [kbdif.read_out_event(view, start + i) for i in range(len(outs))] == outs


# ------------------------------------------------------------ examples


@pytest.mark.parametrize("size", [0, 1, 39, 41, 64])
def test_wrong_slot_size_is_einval(size: int) -> None:
    slot = Key(pressed=True, keycode=30).encode().ljust(64, b"\0")[:size]
    for decode in (kbdif.decode_in_event, kbdif.decode_out_event):
        with pytest.raises(ProtocolError) as caught:
            decode(slot)
        assert caught.value.status == -errno.EINVAL


@pytest.mark.parametrize("type_", [0, EventType.RESERVED, 6, 0xFF])
def test_unknown_in_event_type_is_einval(type_: int) -> None:
    with pytest.raises(ProtocolError, match="unknown in event type"):
        kbdif.decode_in_event(bytes([type_]) + bytes(39))


@pytest.mark.parametrize("mt_type", [6, 0xFF])
def test_unknown_multi_touch_type_is_einval(mt_type: int) -> None:
    with pytest.raises(ProtocolError, match="unknown multi-touch event type"):
        kbdif.decode_in_event(bytes([EventType.MTOUCH, mt_type]) + bytes(38))


def test_multi_touch_sub_events_carry_their_codes() -> None:
    decoded = [
        kbdif.decode_in_event(bytes([EventType.MTOUCH, code]) + bytes(38)) for code in range(6)
    ]
    assert [type(event) for event in decoded] == [MtDown, MtUp, MtMotion, MtSyn, MtShape, MtOrient]
    assert [getattr(event, "event_type", None) for event in decoded] == list(MtEventType)


def test_nonzero_pressed_means_pressed() -> None:
    assert kbdif.decode_in_event(bytes([EventType.KEY, 2]) + bytes(38)) == Key(True, 0)


def test_orientation_is_a_signed_16_bit_angle_at_offset_8() -> None:
    slot = MtOrient(contact_id=3, orientation=-180).encode()
    assert slot[:3] == bytes([EventType.MTOUCH, MtEventType.ORIENT, 3])
    assert slot[8:10] == (-180).to_bytes(2, "little", signed=True)


def test_encoders_reject_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="out of range"):
        MtOrient(contact_id=0, orientation=2**15).encode()
    with pytest.raises(ValueError, match="out of range"):
        OutEvent(type=256).encode()
    with pytest.raises(ValueError, match="39 bytes"):
        OutEvent(type=1, payload=b"short")


def test_wrapped_indices_alias_slots(c_peer: Peer) -> None:
    """Slots are index % LEN on a 32-bit index, so after the wrap a slot can repeat
    while the ring is still holding it: 2**32 - 1 and 0 share in-slot 0 (51 divides
    2**32 - 1), and 2**32 - 1 and 20 share out-slot 20, exactly as the C macros say."""
    for ring, after_wrap in (("in", 0), ("out", 20)):
        assert int(c_peer(f"{ring}_ring_ref {2**32 - 1}")) == int(
            c_peer(f"{ring}_ring_ref {after_wrap}")
        )
    assert kbdif.in_ring_slot_offset(2**32 - 1) == kbdif.in_ring_slot_offset(0)
    assert kbdif.out_ring_slot_offset(2**32 - 1) == kbdif.out_ring_slot_offset(20)


def test_ring_geometry_fills_the_page() -> None:
    assert (kbdif.IN_RING_LEN, kbdif.OUT_RING_LEN) == (51, 25)
    assert kbdif.OUT_RING_OFFS + kbdif.OUT_RING_SIZE == 4096
