"""Xen PV input protocol (xen/io/kbdif.h): in/out events and the shared page.

One shared page carries two event rings: "in" (backend to frontend: pointer,
keyboard and multi-touch input) and "out" (frontend to backend). Every event is
a fixed 40-byte slot in little-endian order. Decoders take a slot already
copied out of shared memory, check its size and type, and ignore reserved
bytes. Every failure is `ProtocolError(EINVAL)`, the errno displ_be uses for
input it does not understand; frontends are told to skip unknown in-events,
which they do by catching it.

An in event's attributes are named after its kbdif.h union member's fields,
which is how its `LAYOUT` (pvdisplay.wire.layout) finds them; the layout tests
check those layouts against the compiled unions.
"""

import enum
import errno
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from pvdisplay.wire.atomics import AtomicIndices
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.layout import (
    EventRing,
    Layout,
    Packet,
    ReadableBuffer,
    WritableBuffer,
    event_ring_indices,
)

DRIVER_NAME = "vkbd"

FIELD_FEAT_DSBL_KEYBRD = "feature-disable-keyboard"
FIELD_FEAT_DSBL_POINTER = "feature-disable-pointer"
FIELD_FEAT_ABS_POINTER = "feature-abs-pointer"
FIELD_FEAT_RAW_POINTER = "feature-raw-pointer"
FIELD_FEAT_MTOUCH = "feature-multi-touch"
FIELD_REQ_ABS_POINTER = "request-abs-pointer"
FIELD_REQ_RAW_POINTER = "request-raw-pointer"
FIELD_REQ_MTOUCH = "request-multi-touch"
FIELD_RING_GREF = "page-gref"
FIELD_EVT_CHANNEL = "event-channel"
FIELD_WIDTH = "width"
FIELD_HEIGHT = "height"
FIELD_MT_WIDTH = "multi-touch-width"
FIELD_MT_HEIGHT = "multi-touch-height"
FIELD_MT_NUM_CONTACTS = "multi-touch-num-contacts"
FIELD_UNIQUE_ID = "unique-id"
# Obsolete: a PFN rather than a grant ref; kept so a backend can recognise it.
FIELD_RING_REF = "page-ref"

IN_EVENT_SIZE = 40
OUT_EVENT_SIZE = 40
IN_RING_OFFS = 1024
IN_RING_SIZE = 2048
IN_RING_LEN = IN_RING_SIZE // IN_EVENT_SIZE
OUT_RING_OFFS = IN_RING_OFFS + IN_RING_SIZE
OUT_RING_SIZE = 1024
OUT_RING_LEN = OUT_RING_SIZE // OUT_EVENT_SIZE


class EventType(enum.IntEnum):
    MOTION = 1
    RESERVED = 2  # never sent; decodes as unknown
    KEY = 3
    POS = 4
    MTOUCH = 5


class MtEventType(enum.IntEnum):
    DOWN = 0
    UP = 1
    MOTION = 2
    SYN = 3
    SHAPE = 4
    ORIENT = 5


def _in_event(member: str, *fields: tuple[str, str], tags: Sequence[str] = ()) -> Layout:
    """`member` of union xenkbd_in_event: its `type` tag, then `fields`, then padding."""
    used = 1 + sum(struct.calcsize("<" + code) for _, code in fields)
    return Layout(
        "union xenkbd_in_event",
        (f"{member}.type", "B"),
        *((f"{member}.{name}" if name else "", code) for name, code in fields),
        ("", f"{IN_EVENT_SIZE - used}x"),
        tags=[f"{member}.{tag}" for tag in ("type", *tags)],
    )


def _mtouch(*fields: tuple[str, str]) -> Layout:
    return _in_event(
        "mtouch",
        ("event_type", "B"),
        ("contact_id", "B"),
        ("", "5x"),
        *((f"u.{name}", code) for name, code in fields),
        tags=["event_type"],
    )


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(errno.EINVAL, message)


# --------------------------------------------------------------- in events

_IN_HEADER = Layout("union xenkbd_in_event", ("type", "B"), ("", f"{IN_EVENT_SIZE - 1}x"))
_TYPE_OFFSET = _IN_HEADER.fields["type"].offset


@dataclass(frozen=True, slots=True)
class Motion(Packet):
    """Relative pointer motion; `rel_z` is the wheel."""

    LAYOUT: ClassVar[Layout] = _in_event(
        "motion", ("", "3x"), ("rel_x", "i"), ("rel_y", "i"), ("rel_z", "i")
    )
    type: ClassVar[EventType] = EventType.MOTION
    rel_x: int
    rel_y: int
    rel_z: int


@dataclass(frozen=True, slots=True)
class Key(Packet):
    """A key or pointer button (KEY_*/BTN_* from linux/input.h) going down or up."""

    LAYOUT: ClassVar[Layout] = _in_event("key", ("pressed", "B"), ("", "2x"), ("keycode", "I"))
    type: ClassVar[EventType] = EventType.KEY
    pressed: bool
    keycode: int

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> Self:
        # Linux xen-kbdfront treats any non-zero `pressed` as pressed.
        pressed, keycode = cls.LAYOUT.unpack(slot)
        return cls(pressed != 0, keycode)


@dataclass(frozen=True, slots=True)
class Position(Packet):
    """Absolute pointer position in framebuffer pixels; `rel_z` is the wheel."""

    LAYOUT: ClassVar[Layout] = _in_event(
        "pos", ("", "3x"), ("abs_x", "i"), ("abs_y", "i"), ("rel_z", "i")
    )
    type: ClassVar[EventType] = EventType.POS
    abs_x: int
    abs_y: int
    rel_z: int


@dataclass(frozen=True, slots=True)
class _MtEvent(Packet):
    """A multi-touch event about one contact; UP and SYN carry nothing else."""

    LAYOUT: ClassVar[Layout] = _mtouch()
    type: ClassVar[EventType] = EventType.MTOUCH
    event_type: ClassVar[MtEventType]
    contact_id: int


@dataclass(frozen=True, slots=True)
class _MtPosition(_MtEvent):
    """DOWN and MOTION carry the contact's position."""

    LAYOUT: ClassVar[Layout] = _mtouch(("pos.abs_x", "i"), ("pos.abs_y", "i"))
    abs_x: int
    abs_y: int


@dataclass(frozen=True, slots=True)
class MtDown(_MtPosition):
    """A new contact touches at (abs_x, abs_y)."""

    event_type: ClassVar[MtEventType] = MtEventType.DOWN


@dataclass(frozen=True, slots=True)
class MtMotion(_MtPosition):
    """The contact moves to (abs_x, abs_y)."""

    event_type: ClassVar[MtEventType] = MtEventType.MOTION


@dataclass(frozen=True, slots=True)
class MtUp(_MtEvent):
    """The contact is released; its id may be reused afterwards."""

    event_type: ClassVar[MtEventType] = MtEventType.UP


@dataclass(frozen=True, slots=True)
class MtSyn(_MtEvent):
    """Ends a group of multi-touch events that belong together."""

    event_type: ClassVar[MtEventType] = MtEventType.SYN


@dataclass(frozen=True, slots=True)
class MtShape(_MtEvent):
    """The contact's ellipse axes, in pixels."""

    LAYOUT: ClassVar[Layout] = _mtouch(("shape.major", "I"), ("shape.minor", "I"))
    event_type: ClassVar[MtEventType] = MtEventType.SHAPE
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class MtOrient(_MtEvent):
    """Clockwise angle in degrees between the major axis and +Y, [-180, 180]."""

    LAYOUT: ClassVar[Layout] = _mtouch(("orientation", "h"))
    event_type: ClassVar[MtEventType] = MtEventType.ORIENT
    orientation: int


MtEvent = MtDown | MtUp | MtMotion | MtSyn | MtShape | MtOrient
InEvent = Motion | Key | Position | MtEvent

_MT_TYPES: tuple[type[MtEvent], ...] = (MtDown, MtUp, MtMotion, MtSyn, MtShape, MtOrient)
_MT_DECODERS: dict[int, Callable[[ReadableBuffer], MtEvent]] = {
    cls.event_type.value: cls._decode for cls in _MT_TYPES
}
_EVENT_TYPE_OFFSET = MtDown.LAYOUT.fields["mtouch.event_type"].offset
_IN_DECODERS: dict[int, Callable[[ReadableBuffer], InEvent]] = {
    cls.type.value: cls._decode for cls in (Motion, Key, Position)
}


def decode_in_event(slot: ReadableBuffer) -> InEvent:
    """Decode one 40-byte in-ring slot, already copied out of the shared page."""
    _IN_HEADER.check_size(slot, "in event")
    event_type = slot[_TYPE_OFFSET]
    if event_type == EventType.MTOUCH:
        mt_type = slot[_EVENT_TYPE_OFFSET]
        mt_decoder = _MT_DECODERS.get(mt_type)
        if mt_decoder is None:
            raise _invalid(f"unknown multi-touch event type {mt_type}")
        return mt_decoder(slot)
    decoder = _IN_DECODERS.get(event_type)
    if decoder is None:
        raise _invalid(f"unknown in event type {event_type}")
    return decoder(slot)


# -------------------------------------------------------------- out events


@dataclass(frozen=True, slots=True)
class OutEvent:
    """A frontend-to-backend event: a type byte and 39 bytes the type defines.

    kbdif defines no out-event type yet and calls receiving an unknown one an
    error, so a backend treats every OutEvent as a protocol violation; the
    codec only frames the slot.
    """

    LAYOUT: ClassVar[Layout] = Layout(
        "union xenkbd_out_event", ("type", "B"), ("", f"{OUT_EVENT_SIZE - 1}s")
    )
    type: int
    payload: bytes = bytes(OUT_EVENT_SIZE - 1)

    def __post_init__(self) -> None:
        if len(self.payload) != OUT_EVENT_SIZE - 1:
            raise ValueError(f"out event payload must be {OUT_EVENT_SIZE - 1} bytes")

    def encode(self) -> bytes:
        return self.LAYOUT.pack(self.type, self.payload)


def decode_out_event(slot: ReadableBuffer) -> OutEvent:
    OutEvent.LAYOUT.check_size(slot, "out event")
    return OutEvent(*OutEvent.LAYOUT.unpack(slot))


# ------------------------------------------------------------- shared page

PAGE_LAYOUT = Layout(
    "struct xenkbd_page", ("in_cons", "I"), ("in_prod", "I"), ("out_cons", "I"), ("out_prod", "I")
)
IN_CONS_OFFSET = PAGE_LAYOUT.fields["in_cons"].offset
IN_PROD_OFFSET = PAGE_LAYOUT.fields["in_prod"].offset
OUT_CONS_OFFSET = PAGE_LAYOUT.fields["out_cons"].offset
OUT_PROD_OFFSET = PAGE_LAYOUT.fields["out_prod"].offset
_IN_RING = EventRing(IN_RING_OFFS, IN_RING_LEN, IN_EVENT_SIZE)
_OUT_RING = EventRing(OUT_RING_OFFS, OUT_RING_LEN, OUT_EVENT_SIZE)


def page_indices(page: WritableBuffer) -> AtomicIndices:
    """`in_cons`, `in_prod`, `out_cons`, `out_prod` of the shared page, by their *_OFFSET.

    Loads are acquires and stores releases; `pvdisplay.wire.layout` says in which order
    each end must use them around its slot copies. Keep one per mapped page and
    `release()` it before the mapping is closed.
    """
    return event_ring_indices(
        page, (IN_CONS_OFFSET, IN_PROD_OFFSET, OUT_CONS_OFFSET, OUT_PROD_OFFSET)
    )


def in_ring_slot_offset(index: int) -> int:
    """Byte offset of XENKBD_IN_RING_REF(page, index) within the shared page.

    51 does not divide 2**32, so the slot index wraps as `EventRing` describes.
    """
    return _IN_RING.slot_offset(index)


def out_ring_slot_offset(index: int) -> int:
    """Byte offset of XENKBD_OUT_RING_REF(page, index) (25 slots)."""
    return _OUT_RING.slot_offset(index)


def write_in_event(page: WritableBuffer, index: int, event: InEvent) -> None:
    _IN_RING.write(page, index, event.encode())


def read_in_event(page: ReadableBuffer, index: int) -> InEvent:
    return decode_in_event(_IN_RING.read(page, index))


def write_out_event(page: WritableBuffer, index: int, event: OutEvent) -> None:
    _OUT_RING.write(page, index, event.encode())


def read_out_event(page: ReadableBuffer, index: int) -> OutEvent:
    return decode_out_event(_OUT_RING.read(page, index))


LAYOUTS: tuple[Layout, ...] = (
    _IN_HEADER,
    Motion.LAYOUT,
    Key.LAYOUT,
    Position.LAYOUT,
    *(cls.LAYOUT for cls in _MT_TYPES),
    OutEvent.LAYOUT,
    PAGE_LAYOUT,
)
