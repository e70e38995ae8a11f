"""Where packets sit in bytes: C types as `struct.Struct`s with named members, and event rings.

A codec lists a C type's members in declaration order as (member path, struct
code) pairs, "" naming padding or bytes it does not interpret. From that one
list come the bytes the codec packs and unpacks and the offset, size and
signedness of every named member, which the tests compare with the compiled
Xen headers. Xen rings are native-endian, and every Xen architecture pvdisplay
targets is little-endian.

Packet classes name their attributes after the last part of each member path
(`fb_cookie` for "op.pg_flip.fb_cookie"), so the same list also says which
attribute goes into which member. Members that say what kind of packet a slot
holds (an operation code, an event type) are tags: the packet's class holds
their value, so they are packed from class attributes and left out when a
slot is unpacked into constructor arguments.

displif.h and kbdif.h both place their event rings in a shared page the same
way: an array of fixed-size slots at a fixed offset, indexed by free-running
32-bit counters that also live in the page. `EventRing` is that array, and
`event_ring_indices` the counters. The peer runs on another CPU, so each end
orders its slot copies against the counters, as Linux xen-front, xen-kbdfront
and their backends do with barriers (docs/ring.md, "Event pages"):

- producer: load `cons`, write the slots, then store `prod`;
- consumer: load `prod`, copy the slots out, then store `cons`.

Every load is an acquire and every store a release (`AtomicIndices`), which keeps
that order on any CPU: slots are neither read before the `prod` that covers them
nor overwritten before the `cons` that frees them, and no `prod` or `cons` is seen
before the slot copies it announces.
"""

import errno
import mmap
import operator
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Self

from pvdisplay.wire.atomics import AtomicIndices
from pvdisplay.wire.errors import ProtocolError

ReadableBuffer = bytes | bytearray | memoryview | mmap.mmap
WritableBuffer = bytearray | memoryview | mmap.mmap


class Field(NamedTuple):
    offset: int
    size: int
    signed: bool


class Layout:
    """One C type: `fields` maps C member paths to their positions in `struct`."""

    __slots__ = ("_attribute_values", "_untagged", "c_type", "fields", "struct")

    def __init__(self, c_type: str, *members: tuple[str, str], tags: Collection[str] = ()) -> None:
        fmt = untagged = "<"
        fields: dict[str, Field] = {}
        for path, code in members:
            if path:
                element = code.lstrip("0123456789")
                fields[path] = Field(
                    struct.calcsize(fmt), struct.calcsize("<" + element), element.islower()
                )
            fmt += code
            untagged += f"{struct.calcsize('<' + code)}x" if path in tags else code
        self.c_type = c_type
        self.struct = struct.Struct(fmt)
        self.fields: Mapping[str, Field] = fields
        self._untagged = struct.Struct(untagged)
        self._attribute_values = _attribute_getter([path.rpartition(".")[2] for path in fields])

    def __repr__(self) -> str:
        return f"Layout({self.c_type!r}, {self.struct.format!r})"

    def pack(self, *values: object) -> bytes:
        """Pack a value for every member but padding, in member order, tags included."""
        return self._pack(values)

    def pack_attributes(self, packet: object) -> bytes:
        """Pack the attributes of `packet` named after the members, in member order."""
        return self._pack(self._attribute_values(packet))

    def _pack(self, values: tuple[object, ...]) -> bytes:
        # Encoders are fed by our own code, so a bad value is a ValueError, not
        # a ProtocolError.
        try:
            return self.struct.pack(*values)
        except struct.error as exc:
            raise ValueError(f"{self.c_type}: value out of range in {values}: {exc}") from None

    def unpack(self, buf: ReadableBuffer) -> tuple[Any, ...]:
        """The values of every member but the tags, in member order, from offset 0."""
        return self._untagged.unpack_from(buf)

    def check_size(self, buf: ReadableBuffer, what: str) -> None:
        """Input of any other size than this type is invalid (EINVAL)."""
        if len(buf) != self.struct.size:
            raise ProtocolError(
                errno.EINVAL, f"{what} must be {self.struct.size} bytes, got {len(buf)}"
            )


def _attribute_getter(names: Sequence[str]) -> Callable[[object], tuple[object, ...]]:
    """`operator.attrgetter(*names)`, which returns a bare value for one name, as a tuple."""
    if len(names) > 1:
        getter: Callable[[object], tuple[object, ...]] = operator.attrgetter(*names)
        return getter
    return lambda packet: tuple(getattr(packet, name) for name in names)


class Packet:
    """A fixed-size packet whose attributes are named after its LAYOUT's members.

    Subclasses are frozen dataclasses whose constructor takes the untagged
    members in order, and class attributes for the tags.
    """

    __slots__ = ()
    LAYOUT: ClassVar[Layout]

    def encode(self) -> bytes:
        return self.LAYOUT.pack_attributes(self)

    @classmethod
    def _decode(cls, slot: ReadableBuffer) -> Self:
        """Decode a slot whose size and tags the caller has checked."""
        return cls(*cls.LAYOUT.unpack(slot))


class EventRing(NamedTuple):
    """`length` event slots of `slot_size` bytes from `offset` of a shared page.

    Like the XENDISPL_IN_RING_REF and XENKBD_*_RING_REF macros, a slot is
    found by reducing the free-running 32-bit index modulo `length`. When
    `length` does not divide 2**32, a slot can come round again across the wrap
    while it still holds an unconsumed event (docs/protocols.md); peers must
    use the same formula, so pvdisplay keeps it.
    """

    offset: int
    length: int
    slot_size: int

    def slot_offset(self, index: int) -> int:
        return self.offset + ((index & _INDEX_MASK) % self.length) * self.slot_size

    def write(self, page: WritableBuffer, index: int, slot: bytes) -> None:
        start = self.slot_offset(index)
        page[start : start + self.slot_size] = slot

    def read(self, page: ReadableBuffer, index: int) -> bytes:
        """Copy the slot out of the (shared) page once; decode only the copy."""
        start = self.slot_offset(index)
        return bytes(page[start : start + self.slot_size])


_INDEX_MASK = 0xFFFFFFFF
_INDEX_SIZE = 4  # RING_IDX is a uint32_t


def event_ring_indices(page: WritableBuffer, offsets: Iterable[int]) -> AtomicIndices:
    """The free-running indices at `offsets` of a shared event page, for ordered access.

    Build it once per mapped page and keep it: it pins the page, so `release()` it before
    the mapping is closed. Stores wrap to 32 bits, as the peer's RING_IDX does.
    """
    return AtomicIndices(page, offsets, _INDEX_SIZE)
