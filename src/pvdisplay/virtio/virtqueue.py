"""Split virtqueues (virtio 1.x, section 2.7) served from guest memory.

The driver (guest) publishes descriptor chains in the available ring; the device takes
them with `Virtqueue.pop`, answers into the chain's device-writable buffers and returns
them with `push`. Everything in the three rings is written by the guest and read here
exactly once per use: descriptor indexes, addresses, lengths and flags are checked
before anything is touched. A malformed chain (an address outside guest RAM, a loop, a
readable buffer after a writable one, a nested or empty indirect table) fails that one
request: it goes straight back to the guest as used with length 0. Only a corrupt ring
(an avail index that runs ahead by more than the queue size, a head outside the table)
breaks the queue, as `virtio_error()` would in QEMU: every later `pop` raises.

Ordering: the five 16-bit fields the two sides synchronise on (avail flags and idx,
used idx, and with EVENT_IDX used_event and avail_event) are only ever accessed with
libatomic's sequentially consistent loads and stores (`pvdisplay.wire.atomics`), the
mechanism the Xen rings use. The avail idx load is an acquire, so ring entries and
descriptors are read after it; the used idx store is a release, so the used element is
visible before the index that publishes it. Store then load is never reordered: the
avail_event store before `pop` re-reads avail idx, and the used idx store before
`should_notify` reads used_event or flags, are the full barriers virtio's notification
suppression needs (else a kick or an interrupt can be lost). Ring fields are accessed
in native byte order, virtio's little-endian on every supported host (x86-64, arm64).
"""

import logging
import struct
from dataclasses import dataclass, field

from pvdisplay import logs
from pvdisplay.virtio import VirtioError
from pvdisplay.virtio.memory import GuestMemoryMap
from pvdisplay.wire.atomics import AtomicIndices
from pvdisplay.wire.layout import Layout

log = logging.getLogger(__name__)
guest_log = logs.PeerLog(log)
"""Lines the guest (one front-end at a time) can make us write, limited."""

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29

MAX_QUEUE_SIZE = 32768
MAX_INDIRECT_DESCRIPTORS = 1024
"""Longest indirect table accepted (QEMU's VIRTQUEUE_MAX_SIZE); Linux uses far fewer."""

DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4

DESCRIPTOR = Layout("struct vring_desc", ("addr", "Q"), ("len", "I"), ("flags", "H"), ("next", "H"))
AVAIL_HEADER = Layout("struct vring_avail", ("flags", "H"), ("idx", "H"))
USED_ELEMENT = Layout("struct vring_used_elem", ("id", "I"), ("len", "I"))
USED_HEADER = Layout("struct vring_used", ("flags", "H"), ("idx", "H"))
LAYOUTS = (DESCRIPTOR, AVAIL_HEADER, USED_ELEMENT, USED_HEADER)
AVAIL_RING_OFFSET = AVAIL_HEADER.struct.size
USED_RING_OFFSET = USED_HEADER.struct.size

DESC_SIZE = DESCRIPTOR.struct.size
_AVAIL_FLAGS = AVAIL_HEADER.fields["flags"].offset
_AVAIL_IDX = AVAIL_HEADER.fields["idx"].offset
_USED_IDX = USED_HEADER.fields["idx"].offset
_U16 = struct.Struct("<H")
_INDEX_MASK = 0xFFFF


def used_event_offset(size: int) -> int:
    """Where the avail ring of `size` entries keeps used_event (EVENT_IDX)."""
    return AVAIL_RING_OFFSET + 2 * size


def avail_event_offset(size: int) -> int:
    """Where the used ring of `size` entries keeps avail_event (EVENT_IDX)."""
    return USED_RING_OFFSET + USED_ELEMENT.struct.size * size


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Whether moving an index from `old_idx` to `new_idx` crossed `event_idx` (mod 2**16)."""
    return (new_idx - event_idx - 1) & _INDEX_MASK < (new_idx - old_idx) & _INDEX_MASK


@dataclass
class Chain:
    """One request: its head descriptor index and its buffers, readable ones first.

    The views alias guest memory, which the guest may change at any time: take a copy
    with `read` before validating anything.
    """

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def readable_length(self) -> int:
        return sum(len(view) for view in self.readable)

    @property
    def writable_length(self) -> int:
        return sum(len(view) for view in self.writable)

    def read(self, limit: int | None = None) -> bytes:
        """A copy of the readable buffers, concatenated, cut at `limit` bytes."""
        out = bytearray()
        for view in self.readable:
            room = len(view) if limit is None else min(len(view), limit - len(out))
            if room <= 0:
                break
            out += view[:room]
        return bytes(out)

    def write(self, data: bytes) -> int:
        """Scatter `data` over the writable buffers; returns the bytes that fit."""
        done = 0
        for view in self.writable:
            if done == len(data):
                break
            count = min(len(view), len(data) - done)
            view[:count] = data[done : done + count]
            done += count
        return done


class Virtqueue:
    """The device side of one split virtqueue of `size` entries.

        `desc_addr`, `avail_addr` and `used_addr` are guest physical addresses (convert
        vhost-user's QEMU addresses with `GuestMemoryMap.user_to_guest`). `next_avail` is
        the first available-ring index to serve (vhost-user SET_VRING_BASE); the used index
        is read from the ring. Raises VirtioError when the rings do not fit in guest memory,
    or their indices are not 2-byte aligned where this process maps them.

        The queue keeps views of the rings: build a new queue after replacing the memory map.
    """

    def __init__(
        self,
        memory: GuestMemoryMap,
        size: int,
        desc_addr: int,
        avail_addr: int,
        used_addr: int,
        *,
        event_idx: bool = False,
        next_avail: int = 0,
    ) -> None:
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtioError(f"queue size {size} is not a power of 2 up to {MAX_QUEUE_SIZE}")
        for name, addr, align in (
            ("descriptor table", desc_addr, DESC_ALIGN),
            ("available ring", avail_addr, AVAIL_ALIGN),
            ("used ring", used_addr, USED_ALIGN),
        ):
            if addr % align:
                raise VirtioError(f"{name} at {addr:#x} is not {align}-byte aligned")
        event_bytes = 2 if event_idx else 0
        self._memory = memory
        self._size = size
        self._event_idx = event_idx
        self._desc = memory.view(desc_addr, DESC_SIZE * size)
        self._avail = memory.view(avail_addr, used_event_offset(size) + event_bytes)
        self._used = memory.view(used_addr, avail_event_offset(size) + event_bytes)
        self._used_event_offset = used_event_offset(size)
        self._avail_event_offset = avail_event_offset(size)
        # Every field the guest and this device synchronise on; see "Ordering" above.
        avail_fields, used_fields = [_AVAIL_FLAGS, _AVAIL_IDX], [_USED_IDX]
        if event_idx:
            avail_fields.append(self._used_event_offset)
            used_fields.append(self._avail_event_offset)
        try:
            self._avail_fields = AtomicIndices(self._avail, avail_fields, 2)
            self._used_fields = AtomicIndices(self._used, used_fields, 2)
        except ValueError as exc:
            raise VirtioError(f"ring index unusable: {exc}") from None
        self._last_avail = next_avail & _INDEX_MASK
        self._used_idx = self._used_fields.load(_USED_IDX)
        self._signalled_used = self._used_idx
        self._in_flight: set[int] = set()
        self._broken: str | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def next_avail(self) -> int:
        """The next available-ring index to serve (vhost-user GET_VRING_BASE)."""
        return self._last_avail

    @property
    def in_flight(self) -> int:
        """Chains popped and not yet pushed."""
        return len(self._in_flight)

    @property
    def broken(self) -> str | None:
        """Why the queue stopped, or None while it works."""
        return self._broken

    def pop(self) -> Chain | None:
        """The next well-formed request, or None when the guest has published no more.

        Malformed chains met on the way are returned to the guest unanswered. Raises
        VirtioError when the ring itself is corrupt (then and on every later call).
        """
        while True:
            if self._broken is not None:
                raise VirtioError(self._broken)
            avail_idx = self._avail_fields.load(_AVAIL_IDX)
            pending = (avail_idx - self._last_avail) & _INDEX_MASK
            if pending > self._size:
                self._break(f"avail index {avail_idx} is {pending} ahead of {self._last_avail}")
                continue
            if pending == 0:
                if not self._event_idx:
                    return None
                # Ask for a kick at the next entry, then look again: the guest may have
                # published one before it could see the request (seq-cst store -> load).
                self._set_avail_event()
                if self._avail_fields.load(_AVAIL_IDX) == avail_idx:
                    return None
                continue
            slot = AVAIL_RING_OFFSET + 2 * (self._last_avail % self._size)
            head: int = _U16.unpack_from(self._avail, slot)[0]
            self._last_avail = (self._last_avail + 1) & _INDEX_MASK
            if self._event_idx:
                self._set_avail_event()
            if head >= self._size:
                self._break(f"head descriptor {head} outside a queue of {self._size}")
                continue
            if head in self._in_flight:
                guest_log.warning("guest", "guest offered a chain already in use", head=head)
                continue
            try:
                chain = self._walk(head)
            except VirtioError as exc:
                guest_log.warning("guest", "bad descriptor chain", head=head, reason=exc)
                self._complete(head, 0)
                continue
            self._in_flight.add(head)
            return chain

    def push(self, chain: Chain, written: int) -> None:
        """Return `chain` to the guest, `written` bytes of its writable buffers filled."""
        if chain.head not in self._in_flight:
            raise ValueError(f"chain {chain.head} is not in flight on this queue")
        if not 0 <= written <= chain.writable_length:
            raise ValueError(f"wrote {written} bytes into {chain.writable_length}")
        self._in_flight.remove(chain.head)
        self._complete(chain.head, written)

    def should_notify(self) -> bool:
        """Whether the guest wants an interrupt for what was pushed since the last call."""
        old, new = self._signalled_used, self._used_idx
        self._signalled_used = new
        # The used idx store in `_complete` is seq-cst, so these loads cannot pass it.
        if self._event_idx:
            return vring_need_event(self._avail_fields.load(self._used_event_offset), new, old)
        flags = self._avail_fields.load(_AVAIL_FLAGS)
        return new != old and not flags & VRING_AVAIL_F_NO_INTERRUPT

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        table: memoryview | bytes = self._desc
        entries = self._size
        index = head
        hops = 0
        in_indirect = False
        while True:
            hops += 1
            if hops > entries:
                raise VirtioError(f"chain longer than its table of {entries} (a loop?)")
            addr, length, flags, next_index = DESCRIPTOR.struct.unpack_from(
                table, DESC_SIZE * index
            )
            if flags & VRING_DESC_F_INDIRECT:
                if in_indirect or flags & VRING_DESC_F_NEXT:
                    raise VirtioError("indirect descriptor inside a table or with NEXT")
                if not 0 < length <= DESC_SIZE * MAX_INDIRECT_DESCRIPTORS or length % DESC_SIZE:
                    raise VirtioError(f"indirect table of {length} bytes")
                # One copy: the guest cannot change the table while it is walked.
                table = bytes(self._memory.view(addr, length))
                entries, index, hops, in_indirect = length // DESC_SIZE, 0, 0, True
                continue
            view = self._memory.view(addr, length)
            if flags & VRING_DESC_F_WRITE:
                chain.writable.append(view)
            elif chain.writable:
                raise VirtioError("device-readable descriptor after a writable one")
            else:
                chain.readable.append(view.toreadonly())
            if not flags & VRING_DESC_F_NEXT:
                return chain
            if next_index >= entries:
                raise VirtioError(f"next descriptor {next_index} outside a table of {entries}")
            index = next_index

    def _complete(self, head: int, written: int) -> None:
        slot = USED_RING_OFFSET + USED_ELEMENT.struct.size * (self._used_idx % self._size)
        USED_ELEMENT.struct.pack_into(self._used, slot, head, written)
        self._used_idx = (self._used_idx + 1) & _INDEX_MASK
        self._used_fields.store(_USED_IDX, self._used_idx)  # release: element first

    def _set_avail_event(self) -> None:
        self._used_fields.store(self._avail_event_offset, self._last_avail)

    def _break(self, reason: str) -> None:
        log.error("virtqueue broken", extra=logs.fields(reason=reason))
        self._broken = reason
