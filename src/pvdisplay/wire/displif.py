"""Xen PV display protocol (xen/io/displif.h): requests, responses, events, pages.

Every packet is a fixed 64-byte ring slot in little-endian order (Xen rings are
native-endian and every Xen architecture pvdisplay targets is little-endian).
Decoders take a slot the caller has already copied out of shared memory, check
its size and operation, and ignore reserved bytes the way displ_be and Linux
xen-front do. Every failure is `ProtocolError(EINVAL)`: displ_be answers an
unknown operation with -EINVAL, and a slot of the wrong size is invalid input.

Each codec's byte layout is a `Layout` whose field offsets are derived from the
`struct.Struct` format the codec packs with, so tests compare the compiled C
structs against exactly what the codec uses.
"""

import enum
import errno
import mmap
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from pvdisplay.wire.errors import ProtocolError

ReadableBuffer = bytes | bytearray | memoryview | mmap.mmap
WritableBuffer = bytearray | memoryview | mmap.mmap

PROTOCOL_VERSION = "2"
PROTOCOL_VERSION_INT = 2

DRIVER_NAME = "vdispl"
LIST_SEPARATOR = ","
RESOLUTION_SEPARATOR = "x"

FIELD_BE_VERSIONS = "versions"
FIELD_FE_VERSION = "version"
FIELD_REQ_RING_REF = "req-ring-ref"
FIELD_REQ_CHANNEL = "req-event-channel"
FIELD_EVT_RING_REF = "evt-ring-ref"
FIELD_EVT_CHANNEL = "evt-event-channel"
FIELD_RESOLUTION = "resolution"
FIELD_BE_ALLOC = "be-alloc"
FIELD_UNIQUE_ID = "unique-id"

EDID_BLOCK_SIZE = 128
EDID_BLOCK_COUNT = 256
EDID_MAX_SIZE = EDID_BLOCK_SIZE * EDID_BLOCK_COUNT

DBUF_FLG_REQ_ALLOC = 1 << 0

# Grant pages are XEN_PAGE_SIZE whatever the guest's own page size is.
PAGE_SIZE = 4096
EVENT_PAGE_SIZE = 4096


class Operation(enum.IntEnum):
    DBUF_CREATE = 0x10
    DBUF_DESTROY = 0x11
    FB_ATTACH = 0x12
    FB_DETACH = 0x13
    SET_CONFIG = 0x14
    PG_FLIP = 0x15
    GET_EDID = 0x16  # protocol version 2 and later


class EventType(enum.IntEnum):
    PG_FLIP = 0x00


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


def _req(member: str, *fields: tuple[str, str]) -> Layout:
    named = [(f"op.{member}.{name}", code) for name, code in fields]
    used = 8 + sum(struct.calcsize("<" + code) for _, code in fields)
    return _layout(
        "struct xendispl_req",
        ("id", "H"),
        ("operation", "B"),
        ("", "5x"),
        *named,
        ("", f"{64 - used}x"),
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


# ---------------------------------------------------------------- requests

_HEADER = _layout("struct xendispl_req", ("id", "H"), ("operation", "B"), ("", "61x"))
REQUEST_SIZE = _HEADER.struct.size
_OPERATION_OFFSET = _HEADER.fields["operation"].offset


class RequestHeader(NamedTuple):
    id: int
    operation: int


def decode_request_header(slot: ReadableBuffer) -> RequestHeader:
    """The id and operation a response must echo, readable even when the body is not."""
    _check_size(slot, REQUEST_SIZE, "request")
    id_, operation = _HEADER.struct.unpack_from(slot)
    return RequestHeader(id_, operation)


@dataclass(frozen=True, slots=True)
class DbufCreate:
    """Create a display buffer described by a page directory at `gref_directory`."""

    LAYOUT: ClassVar[Layout] = _req(
        "dbuf_create",
        ("dbuf_cookie", "Q"),
        ("width", "I"),
        ("height", "I"),
        ("bpp", "I"),
        ("buffer_sz", "I"),
        ("flags", "I"),
        ("gref_directory", "I"),
        ("data_ofs", "I"),
    )
    operation: ClassVar[Operation] = Operation.DBUF_CREATE
    id: int
    dbuf_cookie: int
    width: int
    height: int
    bpp: int
    buffer_sz: int
    flags: int
    gref_directory: int
    data_ofs: int

    @property
    def backend_allocates(self) -> bool:
        return bool(self.flags & DBUF_FLG_REQ_ALLOC)

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT,
            self.id,
            self.operation,
            self.dbuf_cookie,
            self.width,
            self.height,
            self.bpp,
            self.buffer_sz,
            self.flags,
            self.gref_directory,
            self.data_ofs,
        )

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "DbufCreate":
        id_, _, cookie, width, height, bpp, size, flags, gref, ofs = cls.LAYOUT.struct.unpack_from(
            slot
        )
        if flags & ~DBUF_FLG_REQ_ALLOC:
            # The header requires unused flag bits to be 0; a flag we cannot
            # honour must not be silently dropped.
            raise _invalid(f"DBUF_CREATE: unknown flags {flags:#x}")
        return cls(id_, cookie, width, height, bpp, size, flags, gref, ofs)


@dataclass(frozen=True, slots=True)
class DbufDestroy:
    LAYOUT: ClassVar[Layout] = _req("dbuf_destroy", ("dbuf_cookie", "Q"))
    operation: ClassVar[Operation] = Operation.DBUF_DESTROY
    id: int
    dbuf_cookie: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, self.id, self.operation, self.dbuf_cookie)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "DbufDestroy":
        id_, _, cookie = cls.LAYOUT.struct.unpack_from(slot)
        return cls(id_, cookie)


@dataclass(frozen=True, slots=True)
class FbAttach:
    LAYOUT: ClassVar[Layout] = _req(
        "fb_attach",
        ("dbuf_cookie", "Q"),
        ("fb_cookie", "Q"),
        ("width", "I"),
        ("height", "I"),
        ("pixel_format", "I"),
    )
    operation: ClassVar[Operation] = Operation.FB_ATTACH
    id: int
    dbuf_cookie: int
    fb_cookie: int
    width: int
    height: int
    pixel_format: int

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT,
            self.id,
            self.operation,
            self.dbuf_cookie,
            self.fb_cookie,
            self.width,
            self.height,
            self.pixel_format,
        )

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "FbAttach":
        id_, _, dbuf_cookie, fb_cookie, width, height, fourcc = cls.LAYOUT.struct.unpack_from(slot)
        return cls(id_, dbuf_cookie, fb_cookie, width, height, fourcc)


@dataclass(frozen=True, slots=True)
class FbDetach:
    LAYOUT: ClassVar[Layout] = _req("fb_detach", ("fb_cookie", "Q"))
    operation: ClassVar[Operation] = Operation.FB_DETACH
    id: int
    fb_cookie: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, self.id, self.operation, self.fb_cookie)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "FbDetach":
        id_, _, cookie = cls.LAYOUT.struct.unpack_from(slot)
        return cls(id_, cookie)


@dataclass(frozen=True, slots=True)
class SetConfig:
    """Show `fb_cookie` at (x, y, width, height); all-zero fields reset the display.

    `bpp` sits at request offset 32 as the C struct places it; the header's
    ASCII diagram draws it at 36, which no compiler produces.
    """

    LAYOUT: ClassVar[Layout] = _req(
        "set_config",
        ("fb_cookie", "Q"),
        ("x", "I"),
        ("y", "I"),
        ("width", "I"),
        ("height", "I"),
        ("bpp", "I"),
    )
    operation: ClassVar[Operation] = Operation.SET_CONFIG
    id: int
    fb_cookie: int
    x: int
    y: int
    width: int
    height: int
    bpp: int

    @property
    def is_reset(self) -> bool:
        return self.fb_cookie == 0

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT,
            self.id,
            self.operation,
            self.fb_cookie,
            self.x,
            self.y,
            self.width,
            self.height,
            self.bpp,
        )

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "SetConfig":
        id_, _, cookie, x, y, width, height, bpp = cls.LAYOUT.struct.unpack_from(slot)
        return cls(id_, cookie, x, y, width, height, bpp)


@dataclass(frozen=True, slots=True)
class PageFlip:
    LAYOUT: ClassVar[Layout] = _req("pg_flip", ("fb_cookie", "Q"))
    operation: ClassVar[Operation] = Operation.PG_FLIP
    id: int
    fb_cookie: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, self.id, self.operation, self.fb_cookie)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "PageFlip":
        id_, _, cookie = cls.LAYOUT.struct.unpack_from(slot)
        return cls(id_, cookie)


@dataclass(frozen=True, slots=True)
class GetEdid:
    """Ask the backend to write EDID into a `buffer_sz` buffer behind a page directory."""

    LAYOUT: ClassVar[Layout] = _req("get_edid", ("buffer_sz", "I"), ("gref_directory", "I"))
    operation: ClassVar[Operation] = Operation.GET_EDID
    id: int
    buffer_sz: int
    gref_directory: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, self.id, self.operation, self.buffer_sz, self.gref_directory)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> "GetEdid":
        id_, _, size, gref = cls.LAYOUT.struct.unpack_from(slot)
        return cls(id_, size, gref)


Request = DbufCreate | DbufDestroy | FbAttach | FbDetach | SetConfig | PageFlip | GetEdid

_REQUEST_TYPES: tuple[type[Request], ...] = (
    DbufCreate,
    DbufDestroy,
    FbAttach,
    FbDetach,
    SetConfig,
    PageFlip,
    GetEdid,
)
_DECODERS = {cls.operation.value: cls._decode for cls in _REQUEST_TYPES}


def decode_request(slot: ReadableBuffer) -> Request:
    """Decode one 64-byte request slot, already copied out of the shared ring."""
    _check_size(slot, REQUEST_SIZE, "request")
    operation = slot[_OPERATION_OFFSET]
    decoder = _DECODERS.get(operation)
    if decoder is None:
        raise _invalid(f"unknown operation {operation:#04x}")
    return decoder(slot)


# --------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class Response:
    """A response echoes the request's id and operation, even an unknown operation.

    `edid_sz` is only carried by GET_EDID responses; elsewhere those bytes are
    reserved and decode as 0.
    """

    LAYOUT: ClassVar[Layout] = _layout(
        "struct xendispl_resp",
        ("id", "H"),
        ("operation", "B"),
        ("", "x"),
        ("status", "i"),
        ("op.get_edid.edid_sz", "I"),
        ("", "52x"),
    )
    id: int
    operation: int
    status: int
    edid_sz: int = 0

    def __post_init__(self) -> None:
        if self.edid_sz and self.operation != Operation.GET_EDID:
            raise ValueError(f"edid_sz is only carried by GET_EDID, not {self.operation:#x}")

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, self.id, self.operation, self.status, self.edid_sz)


RESPONSE_SIZE = Response.LAYOUT.struct.size


def decode_response(slot: ReadableBuffer) -> Response:
    _check_size(slot, RESPONSE_SIZE, "response")
    id_, operation, status, edid_sz = Response.LAYOUT.struct.unpack_from(slot)
    if operation != Operation.GET_EDID:
        edid_sz = 0
    return Response(id_, operation, status, edid_sz)


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class PageFlipEvent:
    """Backend to frontend: the flip of `fb_cookie` has completed."""

    LAYOUT: ClassVar[Layout] = _layout(
        "struct xendispl_evt",
        ("id", "H"),
        ("type", "B"),
        ("", "5x"),
        ("op.pg_flip.fb_cookie", "Q"),
        ("", "48x"),
    )
    type: ClassVar[EventType] = EventType.PG_FLIP
    id: int
    fb_cookie: int

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, self.id, self.type, self.fb_cookie)


Event = PageFlipEvent
EVENT_SIZE = PageFlipEvent.LAYOUT.struct.size
_EVENT_TYPE_OFFSET = PageFlipEvent.LAYOUT.fields["type"].offset


def decode_event(slot: ReadableBuffer) -> Event:
    _check_size(slot, EVENT_SIZE, "event")
    event_type = slot[_EVENT_TYPE_OFFSET]
    if event_type != EventType.PG_FLIP:
        raise _invalid(f"unknown event type {event_type:#04x}")
    id_, _, cookie = PageFlipEvent.LAYOUT.struct.unpack_from(slot)
    return PageFlipEvent(id_, cookie)


# -------------------------------------------------------------- event page

EVENT_PAGE_LAYOUT = _layout(
    "struct xendispl_event_page", ("in_cons", "I"), ("in_prod", "I"), ("", "56x")
)
IN_CONS_OFFSET = EVENT_PAGE_LAYOUT.fields["in_cons"].offset
IN_PROD_OFFSET = EVENT_PAGE_LAYOUT.fields["in_prod"].offset
IN_RING_OFFS = EVENT_PAGE_LAYOUT.struct.size
IN_RING_SIZE = EVENT_PAGE_SIZE - IN_RING_OFFS
IN_RING_LEN = IN_RING_SIZE // EVENT_SIZE
_INDEX = struct.Struct("<I")


def in_ring_slot_offset(index: int) -> int:
    """Byte offset of XENDISPL_IN_RING_REF(page, index) within the event page.

    Like the C macro, the free-running 32-bit index is reduced modulo the
    63-slot ring. 63 does not divide 2**32, so across the wrap a slot can come
    round again while it still holds an unconsumed event (docs/protocols.md);
    peers must use the same formula, so pvdisplay keeps it.
    """
    return IN_RING_OFFS + ((index & 0xFFFFFFFF) % IN_RING_LEN) * EVENT_SIZE


def read_index(page: ReadableBuffer, offset: int) -> int:
    """Read `in_cons` or `in_prod` (pass IN_CONS_OFFSET or IN_PROD_OFFSET)."""
    value: int = _INDEX.unpack_from(page, offset)[0]
    return value


def write_index(page: WritableBuffer, offset: int, value: int) -> None:
    _INDEX.pack_into(page, offset, value & 0xFFFFFFFF)


def write_event(page: WritableBuffer, index: int, event: Event) -> None:
    offset = in_ring_slot_offset(index)
    page[offset : offset + EVENT_SIZE] = event.encode()


def read_event(page: ReadableBuffer, index: int) -> Event:
    """Copy the slot out of the (shared) page once, then decode the copy."""
    offset = in_ring_slot_offset(index)
    return decode_event(bytes(page[offset : offset + EVENT_SIZE]))


# ---------------------------------------------------------- page directory

_DIRECTORY_HEADER_SIZE = 4
GREFS_PER_DIRECTORY_PAGE = (PAGE_SIZE - _DIRECTORY_HEADER_SIZE) // 4
DIRECTORY_LAYOUT = _layout(
    "struct xendispl_page_directory",
    ("gref_dir_next_page", "I"),
    ("gref[0]", f"{GREFS_PER_DIRECTORY_PAGE}I"),
)
_GREF_OFFSET = DIRECTORY_LAYOUT.fields["gref[0]"].offset


def grefs_for_buffer(buffer_sz: int) -> int:
    """num_grefs_total from displif.h: pages needed to hold `buffer_sz` octets."""
    return (buffer_sz + PAGE_SIZE - 1) // PAGE_SIZE


def directory_pages_for(num_grefs: int) -> int:
    """Directory pages needed for `num_grefs` refs; at least one always exists."""
    return max(1, -(-num_grefs // GREFS_PER_DIRECTORY_PAGE))


def encode_page_directory(grefs: Sequence[int], directory_refs: Sequence[int]) -> list[bytes]:
    """Lay out the directory chain: one PAGE_SIZE page per entry of `directory_refs`.

    `directory_refs` are the grant refs of the directory pages themselves, in
    chain order; the first goes into the request's `gref_directory`, each later
    one into the previous page's `gref_dir_next_page`, and the last page links 0.
    """
    pages_needed = directory_pages_for(len(grefs))
    if len(directory_refs) != pages_needed:
        raise ValueError(
            f"{len(grefs)} refs need {pages_needed} directory pages, got {len(directory_refs)}"
        )
    pages = []
    for page_no in range(pages_needed):
        chunk = grefs[page_no * GREFS_PER_DIRECTORY_PAGE : (page_no + 1) * GREFS_PER_DIRECTORY_PAGE]
        next_ref = directory_refs[page_no + 1] if page_no + 1 < pages_needed else 0
        padded = [*chunk, *[0] * (GREFS_PER_DIRECTORY_PAGE - len(chunk))]
        pages.append(_pack(DIRECTORY_LAYOUT, next_ref, *padded))
    return pages


class PageDirectoryReader:
    """Walks a page directory chain without mapping anything itself.

    Feed it each directory page in turn; it returns the grant ref of the next
    page to map, or None once all `num_grefs` refs are collected. The chain
    length is fixed by `num_grefs`, so a looping chain cannot keep it going.
    """

    def __init__(self, num_grefs: int) -> None:
        self._remaining = num_grefs
        self._pages_left = directory_pages_for(num_grefs)
        self.grefs: list[int] = []

    @property
    def done(self) -> bool:
        return self._pages_left == 0

    def feed(self, page: ReadableBuffer) -> int | None:
        if self.done:
            raise ValueError("page directory already complete")
        _check_size(page, PAGE_SIZE, "page directory page")
        count = min(self._remaining, GREFS_PER_DIRECTORY_PAGE)
        next_ref: int = _INDEX.unpack_from(page)[0]
        self.grefs.extend(struct.unpack_from(f"<{count}I", page, _GREF_OFFSET))
        self._remaining -= count
        self._pages_left -= 1
        if self.done:
            if next_ref != 0:
                raise _invalid(f"directory continues to ref {next_ref} past its last page")
            return None
        if next_ref == 0:
            raise _invalid(f"directory ends with {self._remaining} refs missing")
        return next_ref


# ------------------------------------------------------- XenStore values

_DECIMAL = re.compile(r"[0-9]{1,10}")
_U32_MAX = 0xFFFFFFFF


def _parse_u32(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text) or int(text) > _U32_MAX:
        raise _invalid(f"{what}: {text!r} is not a decimal uint32")
    return int(text)


def parse_resolution(value: str) -> tuple[int, int]:
    """Parse a connector's "resolution" node, e.g. "1920x1080"."""
    width, sep, height = value.partition(RESOLUTION_SEPARATOR)
    if not sep:
        raise _invalid(f"resolution {value!r} lacks {RESOLUTION_SEPARATOR!r}")
    return _parse_u32(width, "resolution width"), _parse_u32(height, "resolution height")


def format_resolution(width: int, height: int) -> str:
    return f"{width}{RESOLUTION_SEPARATOR}{height}"


def parse_versions(value: str) -> tuple[int, ...]:
    """Parse the backend's "versions" node, e.g. "1,2"."""
    return tuple(_parse_u32(part, "versions") for part in value.split(LIST_SEPARATOR))


def format_versions(versions: Sequence[int]) -> str:
    return LIST_SEPARATOR.join(str(v) for v in versions)


LAYOUTS: tuple[Layout, ...] = (
    _HEADER,
    *(cls.LAYOUT for cls in _REQUEST_TYPES),
    Response.LAYOUT,
    PageFlipEvent.LAYOUT,
    EVENT_PAGE_LAYOUT,
    DIRECTORY_LAYOUT,
)
