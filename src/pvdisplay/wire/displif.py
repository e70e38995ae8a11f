"""Xen PV display protocol (xen/io/displif.h): requests, responses, events, pages.

Every packet is a fixed 64-byte ring slot in little-endian order (Xen rings are
native-endian and every Xen architecture pvdisplay targets is little-endian).
Decoders take a slot the caller has already copied out of shared memory, check
its size and operation, and ignore reserved bytes the way displ_be and Linux
xen-front do. Every failure is `ProtocolError(EINVAL)`: displ_be answers an
unknown operation with -EINVAL, and a slot of the wrong size is invalid input.

Packet attributes carry displif.h's member names and each packet class's
`LAYOUT` (pvdisplay.wire.layout) packs them, so the tests can hold the very
layouts the codec uses against the compiled C structs.
"""

import enum
import errno
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Self

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


def _req(member: str, *fields: tuple[str, str]) -> Layout:
    named = [(f"op.{member}.{name}", code) for name, code in fields]
    used = 8 + sum(struct.calcsize("<" + code) for _, code in fields)
    return Layout(
        "struct xendispl_req",
        ("id", "H"),
        ("operation", "B"),
        ("", "5x"),
        *named,
        ("", f"{64 - used}x"),
        tags=["operation"],
    )


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(errno.EINVAL, message)


# ---------------------------------------------------------------- requests

_HEADER = Layout("struct xendispl_req", ("id", "H"), ("operation", "B"), ("", "61x"))
REQUEST_SIZE = _HEADER.struct.size
_OPERATION_OFFSET = _HEADER.fields["operation"].offset


class RequestHeader(NamedTuple):
    id: int
    operation: int


def decode_request_header(slot: ReadableBuffer) -> RequestHeader:
    """The id and operation a response must echo, readable even when the body is not."""
    _HEADER.check_size(slot, "request")
    id_, operation = _HEADER.unpack(slot)
    return RequestHeader(id_, operation)


@dataclass(frozen=True, slots=True)
class _Request(Packet):
    """A request: its class fixes `operation`, and the response echoes `id`."""

    operation: ClassVar[Operation]
    id: int


@dataclass(frozen=True, slots=True)
class DbufCreate(_Request):
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

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> Self:
        request = cls(*cls.LAYOUT.unpack(slot))
        if request.flags & ~DBUF_FLG_REQ_ALLOC:
            # The header requires unused flag bits to be 0; a flag we cannot
            # honour must not be silently dropped.
            raise _invalid(f"DBUF_CREATE: unknown flags {request.flags:#x}")
        return request


@dataclass(frozen=True, slots=True)
class DbufDestroy(_Request):
    """Destroy a previously created display buffer."""

    LAYOUT: ClassVar[Layout] = _req("dbuf_destroy", ("dbuf_cookie", "Q"))
    operation: ClassVar[Operation] = Operation.DBUF_DESTROY
    dbuf_cookie: int


@dataclass(frozen=True, slots=True)
class FbAttach(_Request):
    """Attach a framebuffer of `pixel_format` (a fourcc) to a created display buffer."""

    LAYOUT: ClassVar[Layout] = _req(
        "fb_attach",
        ("dbuf_cookie", "Q"),
        ("fb_cookie", "Q"),
        ("width", "I"),
        ("height", "I"),
        ("pixel_format", "I"),
    )
    operation: ClassVar[Operation] = Operation.FB_ATTACH
    dbuf_cookie: int
    fb_cookie: int
    width: int
    height: int
    pixel_format: int


@dataclass(frozen=True, slots=True)
class FbDetach(_Request):
    """Detach a previously attached framebuffer."""

    LAYOUT: ClassVar[Layout] = _req("fb_detach", ("fb_cookie", "Q"))
    operation: ClassVar[Operation] = Operation.FB_DETACH
    fb_cookie: int


@dataclass(frozen=True, slots=True)
class SetConfig(_Request):
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
    fb_cookie: int
    x: int
    y: int
    width: int
    height: int
    bpp: int

    @property
    def is_reset(self) -> bool:
        return self.fb_cookie == 0


@dataclass(frozen=True, slots=True)
class PageFlip(_Request):
    """Flip to framebuffer `fb_cookie`; a PageFlipEvent reports completion."""

    LAYOUT: ClassVar[Layout] = _req("pg_flip", ("fb_cookie", "Q"))
    operation: ClassVar[Operation] = Operation.PG_FLIP
    fb_cookie: int


@dataclass(frozen=True, slots=True)
class GetEdid(_Request):
    """Ask the backend to write EDID into a `buffer_sz` buffer behind a page directory."""

    LAYOUT: ClassVar[Layout] = _req("get_edid", ("buffer_sz", "I"), ("gref_directory", "I"))
    operation: ClassVar[Operation] = Operation.GET_EDID
    buffer_sz: int
    gref_directory: int


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
    _HEADER.check_size(slot, "request")
    operation = slot[_OPERATION_OFFSET]
    decoder = _DECODERS.get(operation)
    if decoder is None:
        raise _invalid(f"unknown operation {operation:#04x}")
    return decoder(slot)


# --------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class Response(Packet):
    """A response echoes the request's id and operation, even an unknown operation.

    `edid_sz` is only carried by GET_EDID responses; elsewhere those bytes are
    reserved and decode as 0.
    """

    LAYOUT: ClassVar[Layout] = Layout(
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


RESPONSE_SIZE = Response.LAYOUT.struct.size
_RESPONSE_STRUCT = Response.LAYOUT.struct


def encode_response(request_id: int, operation: int, status: int) -> bytes:
    """`Response(request_id, operation, status).encode()` without building the packet,
    for every response but GET_EDID's (which carries `edid_sz`)."""
    return _RESPONSE_STRUCT.pack(request_id, operation, status, 0)


def decode_response(slot: ReadableBuffer) -> Response:
    Response.LAYOUT.check_size(slot, "response")
    id_, operation, status, edid_sz = Response.LAYOUT.unpack(slot)
    if operation != Operation.GET_EDID:
        edid_sz = 0
    return Response(id_, operation, status, edid_sz)


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class PageFlipEvent(Packet):
    """Backend to frontend: the flip of `fb_cookie` has completed."""

    LAYOUT: ClassVar[Layout] = Layout(
        "struct xendispl_evt",
        ("id", "H"),
        ("type", "B"),
        ("", "5x"),
        ("op.pg_flip.fb_cookie", "Q"),
        ("", "48x"),
        tags=["type"],
    )
    type: ClassVar[EventType] = EventType.PG_FLIP
    id: int
    fb_cookie: int


Event = PageFlipEvent
EVENT_SIZE = PageFlipEvent.LAYOUT.struct.size
_EVENT_STRUCT = PageFlipEvent.LAYOUT.struct
_PG_FLIP_EVENT = int(EventType.PG_FLIP)


def encode_page_flip_event(event_id: int, fb_cookie: int) -> bytes:
    """`PageFlipEvent(event_id, fb_cookie).encode()` without building the packet."""
    return _EVENT_STRUCT.pack(event_id, _PG_FLIP_EVENT, fb_cookie)


_EVENT_TYPE_OFFSET = PageFlipEvent.LAYOUT.fields["type"].offset


def decode_event(slot: ReadableBuffer) -> Event:
    PageFlipEvent.LAYOUT.check_size(slot, "event")
    event_type = slot[_EVENT_TYPE_OFFSET]
    if event_type != EventType.PG_FLIP:
        raise _invalid(f"unknown event type {event_type:#04x}")
    return PageFlipEvent._decode(slot)


# -------------------------------------------------------------- event page

EVENT_PAGE_LAYOUT = Layout(
    "struct xendispl_event_page", ("in_cons", "I"), ("in_prod", "I"), ("", "56x")
)
IN_CONS_OFFSET = EVENT_PAGE_LAYOUT.fields["in_cons"].offset
IN_PROD_OFFSET = EVENT_PAGE_LAYOUT.fields["in_prod"].offset
IN_RING_OFFS = EVENT_PAGE_LAYOUT.struct.size
IN_RING_SIZE = EVENT_PAGE_SIZE - IN_RING_OFFS
IN_RING_LEN = IN_RING_SIZE // EVENT_SIZE
_IN_RING = EventRing(IN_RING_OFFS, IN_RING_LEN, EVENT_SIZE)


def page_indices(page: WritableBuffer) -> AtomicIndices:
    """`in_cons` and `in_prod` of an event page: `load`/`store` them by their *_OFFSET.

    Loads are acquires and stores releases; `pvdisplay.wire.layout` says in which order
    each end must use them around its slot copies. Keep one per mapped page and
    `release()` it before the mapping is closed.
    """
    return event_ring_indices(page, (IN_CONS_OFFSET, IN_PROD_OFFSET))


def in_ring_slot_offset(index: int) -> int:
    """Byte offset of XENDISPL_IN_RING_REF(page, index) within the event page.

    63 does not divide 2**32, so the slot index wraps as `EventRing` describes.
    """
    return _IN_RING.slot_offset(index)


def write_event(page: WritableBuffer, index: int, event: bytes) -> None:
    """Put an encoded event into the slot of `index` (XENDISPL_IN_RING_REF)."""
    _IN_RING.write(page, index, event)


def read_event(page: ReadableBuffer, index: int) -> Event:
    return decode_event(_IN_RING.read(page, index))


# ---------------------------------------------------------- page directory

_DIRECTORY_HEADER_SIZE = 4
GREFS_PER_DIRECTORY_PAGE = (PAGE_SIZE - _DIRECTORY_HEADER_SIZE) // 4
DIRECTORY_LAYOUT = Layout(
    "struct xendispl_page_directory",
    ("gref_dir_next_page", "I"),
    ("gref[0]", f"{GREFS_PER_DIRECTORY_PAGE}I"),
)
_NEXT_PAGE_OFFSET = DIRECTORY_LAYOUT.fields["gref_dir_next_page"].offset
_GREF_OFFSET = DIRECTORY_LAYOUT.fields["gref[0]"].offset
_GREF = struct.Struct("<I")


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
        pages.append(DIRECTORY_LAYOUT.pack(next_ref, *padded))
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
        DIRECTORY_LAYOUT.check_size(page, "page directory page")
        count = min(self._remaining, GREFS_PER_DIRECTORY_PAGE)
        next_ref: int = _GREF.unpack_from(page, _NEXT_PAGE_OFFSET)[0]
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
