"""Xen PV input protocol (xen/io/kbdif.h): in/out events and the shared page.

One shared page carries two event rings: "in" (backend to frontend: pointer,
keyboard and multi-touch input) and "out" (frontend to backend). Every event is
a fixed 40-byte slot in little-endian order. Decoders take a slot already
copied out of shared memory, check its size and type, and ignore reserved
bytes. Every failure is `ProtocolError(EINVAL)`, the errno displ_be uses for
input it does not understand; frontends are told to skip unknown in-events,
which they do by catching it.

Each codec's byte layout is a `Layout` whose field offsets are derived from the
`struct.Struct` format the codec packs with, so tests compare the compiled C
structs against exactly what the codec uses.
"""

import enum
import errno
import mmap
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from pvdisplay.wire.errors import ProtocolError

ReadableBuffer = bytes | bytearray | memoryview | mmap.mmap
WritableBuffer = bytearray | memoryview | mmap.mmap

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


class Field(NamedTuple):
    offset: int
    size: int
    signed: bool


class Layout(NamedTuple):
    """One C type as a codec packs it: `fields` maps C member paths to positions."""

    c_type: str
    struct: struct.Struct
    fields: Mapping[str, Field]


def _layout(c_type: str, *members: tuple[str, str]) -> Layout:
    """Build a layout from (C member path, struct code) pairs; "" names padding."""
    fmt = "<"
    fields: dict[str, Field] = {}
    for name, code in members:
        if name:
            element = code.lstrip("0123456789")
            fields[name] = Field(
                struct.calcsize(fmt), struct.calcsize("<" + element), element.islower()
            )
        fmt += code
    return Layout(c_type, struct.Struct(fmt), fields)


def _in_event(member: str, *fields: tuple[str, str]) -> Layout:
    used = sum(struct.calcsize("<" + code) for _, code in fields)
    return _layout(
        "union xenkbd_in_event",
        *((f"{member}.{name}" if name else "", code) for name, code in fields),
        ("", f"{IN_EVENT_SIZE - used}x"),
    )


def _mtouch(*fields: tuple[str, str]) -> Layout:
    return _in_event(
        "mtouch",
        ("type", "B"),
        ("event_type", "B"),
        ("contact_id", "B"),
        ("", "5x"),
        *((f"u.{name}", code) for name, code in fields),
    )


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(errno.EINVAL, message)


def _check_size(buf: ReadableBuffer, size: int, what: str) -> None:
    if len(buf) != size:
        raise _invalid(f"{what} must be {size} bytes, got {len(buf)}")


def _pack(layout: Layout, *values: int) -> bytes:
    try:
        return layout.struct.pack(*values)
    except struct.error as exc:
        raise ValueError(f"{layout.c_type}: value out of range in {values}: {exc}") from None


# --------------------------------------------------------------- in events

_IN_HEADER = _layout("union xenkbd_in_event", ("type", "B"), ("", f"{IN_EVENT_SIZE - 1}x"))
_TYPE_OFFSET = _IN_HEADER.fields["type"].offset


@dataclass(frozen=True, slots=True)
class Motion:
    """Relative pointer motion; `rel_z` is the wheel."""

    LAYOUT: ClassVar[Layout] = _in_event(
        "motion", ("type", "B"), ("", "3x"), ("rel_x", "i"), ("rel_y", "i"), ("rel_z", "i")
    )
    rel_x: int
    rel_y: int
    rel_z: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, EventType.MOTION, self.rel_x, self.rel_y, self.rel_z)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "Motion":
        _, x, y, z = cls.LAYOUT.struct.unpack_from(slot)
        return cls(x, y, z)


@dataclass(frozen=True, slots=True)
class Key:
    """A key or pointer button (KEY_*/BTN_* from linux/input.h) going down or up."""

    LAYOUT: ClassVar[Layout] = _in_event(
        "key", ("type", "B"), ("pressed", "B"), ("", "2x"), ("keycode", "I")
    )
    pressed: bool
    keycode: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, EventType.KEY, self.pressed, self.keycode)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "Key":
        # Linux xen-kbdfront treats any non-zero `pressed` as pressed.
        _, pressed, keycode = cls.LAYOUT.struct.unpack_from(slot)
        return cls(pressed != 0, keycode)


@dataclass(frozen=True, slots=True)
class Position:
    """Absolute pointer position in framebuffer pixels; `rel_z` is the wheel."""

    LAYOUT: ClassVar[Layout] = _in_event(
        "pos", ("type", "B"), ("", "3x"), ("abs_x", "i"), ("abs_y", "i"), ("rel_z", "i")
    )
    abs_x: int
    abs_y: int
    rel_z: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, EventType.POS, self.abs_x, self.abs_y, self.rel_z)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "Position":
        _, x, y, z = cls.LAYOUT.struct.unpack_from(slot)
        return cls(x, y, z)


@dataclass(frozen=True, slots=True)
class MtDown:
    """A new contact touches at (abs_x, abs_y)."""

    LAYOUT: ClassVar[Layout] = _mtouch(("pos.abs_x", "i"), ("pos.abs_y", "i"))
    event_type: ClassVar[MtEventType] = MtEventType.DOWN
    contact_id: int
    abs_x: int
    abs_y: int

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT, EventType.MTOUCH, self.event_type, self.contact_id, self.abs_x, self.abs_y
        )

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "MtDown":
        _, _, contact, x, y = cls.LAYOUT.struct.unpack_from(slot)
        return cls(contact, x, y)


@dataclass(frozen=True, slots=True)
class MtMotion:
    LAYOUT: ClassVar[Layout] = _mtouch(("pos.abs_x", "i"), ("pos.abs_y", "i"))
    event_type: ClassVar[MtEventType] = MtEventType.MOTION
    contact_id: int
    abs_x: int
    abs_y: int

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT, EventType.MTOUCH, self.event_type, self.contact_id, self.abs_x, self.abs_y
        )

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "MtMotion":
        _, _, contact, x, y = cls.LAYOUT.struct.unpack_from(slot)
        return cls(contact, x, y)


@dataclass(frozen=True, slots=True)
class MtUp:
    """The contact is released; its id may be reused afterwards."""

    LAYOUT: ClassVar[Layout] = _mtouch()
    event_type: ClassVar[MtEventType] = MtEventType.UP
    contact_id: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, EventType.MTOUCH, self.event_type, self.contact_id)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "MtUp":
        _, _, contact = cls.LAYOUT.struct.unpack_from(slot)
        return cls(contact)


@dataclass(frozen=True, slots=True)
class MtSyn:
    """Ends a group of multi-touch events that belong together."""

    LAYOUT: ClassVar[Layout] = _mtouch()
    event_type: ClassVar[MtEventType] = MtEventType.SYN
    contact_id: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, EventType.MTOUCH, self.event_type, self.contact_id)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "MtSyn":
        _, _, contact = cls.LAYOUT.struct.unpack_from(slot)
        return cls(contact)


@dataclass(frozen=True, slots=True)
class MtShape:
    """The contact's ellipse axes, in pixels."""

    LAYOUT: ClassVar[Layout] = _mtouch(("shape.major", "I"), ("shape.minor", "I"))
    event_type: ClassVar[MtEventType] = MtEventType.SHAPE
    contact_id: int
    major: int
    minor: int

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT, EventType.MTOUCH, self.event_type, self.contact_id, self.major, self.minor
        )

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "MtShape":
        _, _, contact, major, minor = cls.LAYOUT.struct.unpack_from(slot)
        return cls(contact, major, minor)


@dataclass(frozen=True, slots=True)
class MtOrient:
    """Clockwise angle in degrees between the major axis and +Y, [-180, 180]."""

    LAYOUT: ClassVar[Layout] = _mtouch(("orientation", "h"))
    event_type: ClassVar[MtEventType] = MtEventType.ORIENT
    contact_id: int
    orientation: int

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT, EventType.MTOUCH, self.event_type, self.contact_id, self.orientation
        )

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "MtOrient":
        _, _, contact, angle = cls.LAYOUT.struct.unpack_from(slot)
        return cls(contact, angle)


MtEvent = MtDown | MtUp | MtMotion | MtSyn | MtShape | MtOrient
InEvent = Motion | Key | Position | MtEvent

_MT_TYPES: tuple[type[MtEvent], ...] = (MtDown, MtUp, MtMotion, MtSyn, MtShape, MtOrient)
_MT_DECODERS: dict[int, Callable[[ReadableBuffer], MtEvent]] = {
    cls.event_type.value: cls._decode for cls in _MT_TYPES
}
_EVENT_TYPE_OFFSET = MtDown.LAYOUT.fields["mtouch.event_type"].offset
_IN_DECODERS: dict[int, Callable[[ReadableBuffer], InEvent]] = {
    EventType.MOTION.value: Motion._decode,
    EventType.KEY.value: Key._decode,
    EventType.POS.value: Position._decode,
}


def decode_in_event(slot: ReadableBuffer) -> InEvent:
    """Decode one 40-byte in-ring slot, already copied out of the shared page."""
    _check_size(slot, IN_EVENT_SIZE, "in event")
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

    LAYOUT: ClassVar[Layout] = _layout(
        "union xenkbd_out_event", ("type", "B"), ("", f"{OUT_EVENT_SIZE - 1}s")
    )
    type: int
    payload: bytes = bytes(OUT_EVENT_SIZE - 1)

    def __post_init__(self) -> None:
        if len(self.payload) != OUT_EVENT_SIZE - 1:
            raise ValueError(f"out event payload must be {OUT_EVENT_SIZE - 1} bytes")

    def encode(self) -> bytes:
        try:
            return self.LAYOUT.struct.pack(self.type, self.payload)
        except struct.error as exc:
            raise ValueError(f"out event type {self.type} out of range: {exc}") from None


def decode_out_event(slot: ReadableBuffer) -> OutEvent:
    _check_size(slot, OUT_EVENT_SIZE, "out event")
    event_type, payload = OutEvent.LAYOUT.struct.unpack_from(slot)
    return OutEvent(event_type, payload)


# ------------------------------------------------------------- shared page

PAGE_LAYOUT = _layout(
    "struct xenkbd_page", ("in_cons", "I"), ("in_prod", "I"), ("out_cons", "I"), ("out_prod", "I")
)
IN_CONS_OFFSET = PAGE_LAYOUT.fields["in_cons"].offset
IN_PROD_OFFSET = PAGE_LAYOUT.fields["in_prod"].offset
OUT_CONS_OFFSET = PAGE_LAYOUT.fields["out_cons"].offset
OUT_PROD_OFFSET = PAGE_LAYOUT.fields["out_prod"].offset
_INDEX = struct.Struct("<I")


def in_ring_slot_offset(index: int) -> int:
    """Byte offset of XENKBD_IN_RING_REF(page, index) within the shared page.

    Like the C macro, the free-running 32-bit index is reduced modulo the
    51-slot ring. 51 does not divide 2**32, so across the wrap a slot can come
    round again while it still holds an unconsumed event (docs/protocols.md);
    peers must use the same formula, so pvdisplay keeps it.
    """
    return IN_RING_OFFS + ((index & 0xFFFFFFFF) % IN_RING_LEN) * IN_EVENT_SIZE


def out_ring_slot_offset(index: int) -> int:
    """Byte offset of XENKBD_OUT_RING_REF(page, index) (25 slots)."""
    return OUT_RING_OFFS + ((index & 0xFFFFFFFF) % OUT_RING_LEN) * OUT_EVENT_SIZE


def read_index(page: ReadableBuffer, offset: int) -> int:
    """Read an index; pass IN_CONS_OFFSET, IN_PROD_OFFSET, OUT_CONS_OFFSET or OUT_PROD_OFFSET."""
    value: int = _INDEX.unpack_from(page, offset)[0]
    return value


def write_index(page: WritableBuffer, offset: int, value: int) -> None:
    _INDEX.pack_into(page, offset, value & 0xFFFFFFFF)


def write_in_event(page: WritableBuffer, index: int, event: InEvent) -> None:
    offset = in_ring_slot_offset(index)
    page[offset : offset + IN_EVENT_SIZE] = event.encode()


def read_in_event(page: ReadableBuffer, index: int) -> InEvent:
    """Copy the slot out of the (shared) page once, then decode the copy."""
    offset = in_ring_slot_offset(index)
    return decode_in_event(bytes(page[offset : offset + IN_EVENT_SIZE]))


def write_out_event(page: WritableBuffer, index: int, event: OutEvent) -> None:
    offset = out_ring_slot_offset(index)
    page[offset : offset + OUT_EVENT_SIZE] = event.encode()


def read_out_event(page: ReadableBuffer, index: int) -> OutEvent:
    offset = out_ring_slot_offset(index)
    return decode_out_event(bytes(page[offset : offset + OUT_EVENT_SIZE]))


LAYOUTS: tuple[Layout, ...] = (
    _IN_HEADER,
    Motion.LAYOUT,
    Key.LAYOUT,
    Position.LAYOUT,
    *(cls.LAYOUT for cls in _MT_TYPES),
    OutEvent.LAYOUT,
    PAGE_LAYOUT,
)
