"""Xen's shared request/response ring (``xen/io/ring.h``) over a writable buffer, sans-IO.

One ring area holds the 64-byte ``struct <name>_sring`` header (``req_prod``,
``req_event``, ``rsp_prod``, ``rsp_event``, 48 bytes of padding) followed by
``ring_size()`` slots. The frontend puts requests into slots and the backend
answers in the same slots. Indices are free-running ``RING_IDX`` (unsigned 32-bit)
counters, so every difference below is taken mod 2**32.

`FrontRing` and `BackRing` are the ring.h macros as methods: they return
"notify the peer?" and "more work?" booleans and leave event channels, threads and
sleeping to the caller.

Memory ordering. ring.h orders index publication with ``xen_wmb``/``xen_rmb``/``xen_mb``.
Here every access to a header index goes through libatomic (``__atomic_load_4`` /
``__atomic_store_4`` with ``__ATOMIC_SEQ_CST``, see `pvdisplay.wire.atomics`):

* a sequentially consistent store is at least a release store, so slot bytes written
  before ``push_*()`` are visible before the new producer index (``xen_wmb``);
* a sequentially consistent load is at least an acquire load, so slot bytes are read
  only after the producer index that covers them (``xen_rmb``);
* a sequentially consistent store followed by a sequentially consistent load is never
  reordered, which is the ``xen_mb`` between "store req_prod" and "load req_event" in
  ``RING_PUSH_*_AND_CHECK_NOTIFY`` and between "store req_event" and "load req_prod" in
  ``RING_FINAL_CHECK_*``. x86 TSO does not give this store->load order for free; on
  x86-64 libatomic's store is an ``xchg``, which does.

Slot bytes themselves are plain memoryview copies: the index accesses around them are
what order them, exactly as in C. Indices are in native byte order, as the C peer on
the same machine sees them (little-endian on every Xen architecture).

The area is the whole buffer: ``len(area)`` is the size ring.h's ``__RING_SIZE`` and
``*_RING_ATTACH`` are given (4096 for a one-page ring; slice a larger mapping).

Trust. The peer writes the same page at any moment. Each slot is copied out once
(``take_*()`` returns ``bytes``, XSA-155) and each producer index the peer publishes is
checked against the range an honest peer could have reached since we last looked. An
impossible index raises `ProtocolError` with errno ``EIO``, and the ring then stays
failed: every later read of the peer's index raises the same error.
"""

import errno
import mmap
import struct
from typing import Final, Self, TypeAlias

from pvdisplay.wire.atomics import AtomicIndices
from pvdisplay.wire.errors import ProtocolError

WritableBuffer: TypeAlias = bytearray | memoryview | mmap.mmap

XEN_PAGE_SIZE: Final = 4096
RING_IDX_MASK: Final = 0xFFFF_FFFF

# (offsetof, sizeof) of each field of struct <name>_sring; tests/test_ring_layout.py
# proves these against gcc's view of DEFINE_RING_TYPES.
SRING_FIELDS: Final = {
    "req_prod": (0, 4),
    "req_event": (4, 4),
    "rsp_prod": (8, 4),
    "rsp_event": (12, 4),
    "pvt": (16, 4),
    "__pad": (20, 44),
}
# offsetof(struct <name>_sring, ring): where slot 0 starts.
SRING_HEADER_SIZE: Final = 64

_REQ_PROD, _REQ_EVENT, _RSP_PROD, _RSP_EVENT = (
    SRING_FIELDS[name][0] for name in ("req_prod", "req_event", "rsp_prod", "rsp_event")
)


class RingFullError(Exception):
    """The producer asked for a slot it does not have.

    A frontend has no free slot (``RING_FULL``); a backend has already answered every
    request it took. This is a local usage error, never caused by the peer.
    """


def ring_size(slot_size: int, area_size: int = XEN_PAGE_SIZE) -> int:
    """``__RING_SIZE``: slots in an area, rounded down to a power of two."""
    if slot_size <= 0:
        raise ValueError(f"slot size must be positive, got {slot_size}")
    fitting = (area_size - SRING_HEADER_SIZE) // slot_size
    if fitting < 1:
        raise ValueError(f"a {area_size}-byte area holds no {slot_size}-byte slot")
    return 1 << (fitting.bit_length() - 1)


def init_shared_ring(area: WritableBuffer, index: int = 0) -> None:
    """``SHARED_RING_INIT``, generalised to start every index at ``index``.

    With ``index=0`` the header bytes are exactly those of ``SHARED_RING_INIT``:
    producers 0, events 1, padding zeroed. A nonzero start (for instance near 2**32
    to exercise wrap-around) must be matched by the ``index`` both ends attach at.
    The frontend calls this before it advertises the ring, so plain stores suffice.
    """
    index &= RING_IDX_MASK
    event = (index + 1) & RING_IDX_MASK
    pad_start = SRING_FIELDS["pvt"][0]
    with memoryview(area) as raw, raw.cast("B") as view:
        # req_prod, req_event, rsp_prod, rsp_event: consecutive (see SRING_FIELDS).
        struct.pack_into("=4I", view, _REQ_PROD, index, event, index, event)
        view[pad_start:SRING_HEADER_SIZE] = bytes(SRING_HEADER_SIZE - pad_start)


def _notify_needed(old: int, new: int, event: int) -> bool:
    # RING_PUSH_*_AND_CHECK_NOTIFY: the consumer asked to be woken at `event`;
    # notify iff `event` lies in (old, new], measured in RING_IDX wrap arithmetic.
    return (new - event) & RING_IDX_MASK < (new - old) & RING_IDX_MASK


class _SharedArea:
    """The mapped ring area: atomic header indices and slot views."""

    def __init__(self, area: WritableBuffer, slot_size: int) -> None:
        view = memoryview(area).cast("B")
        if view.readonly:
            raise TypeError("the ring area must be writable")
        self.size = ring_size(slot_size, len(view))
        self.slot_size = slot_size
        self._view = view
        # Holding the indices pins the buffer: an mmap cannot be closed and a bytearray
        # cannot be resized while their raw pointers may still be used.
        self._indices = AtomicIndices(view, (_REQ_PROD, _REQ_EVENT, _RSP_PROD, _RSP_EVENT), 4)
        # Bound straight to the libatomic accessors: one Python call per index access.
        self.load = self._indices.load
        self.store = self._indices.store
        self._zero_slot = bytes(slot_size)

    def release(self) -> None:
        self._indices.release()
        self._view.release()

    def slot(self, index: int) -> memoryview:
        start = SRING_HEADER_SIZE + (index & (self.size - 1)) * self.slot_size
        return self._view[start : start + self.slot_size]

    def cleared_slot(self, index: int) -> memoryview:
        # Reserved fields must be zero; a slot still holds the previous message.
        slot = self.slot(index)
        slot[:] = self._zero_slot
        return slot


class _RingEnd:
    """What both ends share: the mapped area and its lifetime."""

    def __init__(self, area: WritableBuffer, slot_size: int) -> None:
        self._shared = _SharedArea(area, slot_size)
        self.size: Final = self._shared.size
        self._failure: ProtocolError | None = None

    def release(self) -> None:
        """Stop using the area so its mmap can be closed; the ring is unusable after."""
        self._shared.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class FrontRing(_RingEnd):
    """The frontend's end: produces requests, consumes responses.

    ``FRONT_RING_ATTACH(ring, area, index, len(area))``: the header must already hold
    ``index`` in both producers (see `init_shared_ring`).
    """

    def __init__(self, area: WritableBuffer, slot_size: int, index: int = 0) -> None:
        super().__init__(area, slot_size)
        index &= RING_IDX_MASK
        self._req_prod_pvt = index
        self._rsp_cons = index
        # Our own record of what we published, so a backend scribbling on req_prod can
        # neither steer our notify decisions nor widen the response range we accept.
        self._req_prod_published = index
        self._rsp_prod_seen = index

    @property
    def req_prod_pvt(self) -> int:
        """Index of the next request slot (``req_prod_pvt``)."""
        return self._req_prod_pvt

    @property
    def rsp_cons(self) -> int:
        """Index of the next response to consume (``rsp_cons``)."""
        return self._rsp_cons

    @property
    def free_requests(self) -> int:
        """``RING_FREE_REQUESTS``."""
        return self.size - ((self._req_prod_pvt - self._rsp_cons) & RING_IDX_MASK)

    @property
    def full(self) -> bool:
        """``RING_FULL``."""
        return self.free_requests == 0

    @property
    def outstanding_requests(self) -> int:
        """Requests produced whose responses are not yet consumed."""
        return (self._req_prod_pvt - self._rsp_cons) & RING_IDX_MASK

    def new_request(self) -> memoryview:
        """Zero the slot at ``req_prod_pvt``, advance, return the slot to fill in.

        The request becomes visible to the backend at the next `push_requests`;
        write the slot before that and not after.
        """
        if self.full:
            raise RingFullError(f"all {self.size} request slots are in flight")
        slot = self._shared.cleared_slot(self._req_prod_pvt)
        self._req_prod_pvt = (self._req_prod_pvt + 1) & RING_IDX_MASK
        return slot

    def push_requests(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: publish, return whether to notify."""
        old, new = self._req_prod_published, self._req_prod_pvt
        self._shared.store(_REQ_PROD, new)
        self._req_prod_published = new
        return _notify_needed(old, new, self._shared.load(_REQ_EVENT))

    def unconsumed_responses(self) -> int:
        """``RING_HAS_UNCONSUMED_RESPONSES``; raises `ProtocolError` on a bad rsp_prod."""
        return (self._read_rsp_prod() - self._rsp_cons) & RING_IDX_MASK

    def take_response(self) -> bytes | None:
        """Copy out the next published response and advance, or None if there is none."""
        if self._failure is not None:
            raise self._failure
        if self._rsp_cons == self._rsp_prod_seen and self._read_rsp_prod() == self._rsp_cons:
            return None
        response = self._shared.slot(self._rsp_cons).tobytes()
        self._rsp_cons = (self._rsp_cons + 1) & RING_IDX_MASK
        return response

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``: True if responses are pending.

        When it returns False it has asked the backend to notify on the next response,
        so the caller may sleep until that notification.
        """
        if self.unconsumed_responses():
            return True
        self._shared.store(_RSP_EVENT, self._rsp_cons + 1)
        return self.unconsumed_responses() > 0

    def _read_rsp_prod(self) -> int:
        if self._failure is not None:
            raise self._failure
        seen, published = self._rsp_prod_seen, self._req_prod_published
        prod = self._shared.load(_RSP_PROD)
        # An honest backend answers only requests we published, and never retracts.
        if (prod - seen) & RING_IDX_MASK > (published - seen) & RING_IDX_MASK:
            self._failure = ProtocolError(
                errno.EIO,
                f"backend published rsp_prod {prod:#x} outside "
                f"[{seen:#x}, {published:#x}] (last seen, requests published)",
            )
            raise self._failure
        self._rsp_prod_seen = prod
        return prod


class BackRing(_RingEnd):
    """The backend's end: consumes requests, produces responses.

    ``BACK_RING_ATTACH(ring, area, index, len(area))``.
    """

    def __init__(self, area: WritableBuffer, slot_size: int, index: int = 0) -> None:
        super().__init__(area, slot_size)
        index &= RING_IDX_MASK
        self._rsp_prod_pvt = index
        self._req_cons = index
        self._rsp_prod_published = index
        self._req_prod_seen = index

    @property
    def rsp_prod_pvt(self) -> int:
        """Index of the next response slot (``rsp_prod_pvt``)."""
        return self._rsp_prod_pvt

    @property
    def req_cons(self) -> int:
        """Index of the next request to consume (``req_cons``)."""
        return self._req_cons

    @property
    def unanswered_requests(self) -> int:
        """Requests taken whose responses are not yet produced."""
        return (self._req_cons - self._rsp_prod_pvt) & RING_IDX_MASK

    def unconsumed_requests(self) -> int:
        """``RING_HAS_UNCONSUMED_REQUESTS``; raises `ProtocolError` on a bad req_prod.

        ring.h clamps the count to the slots not holding unanswered requests; a
        req_prod that passes our check never exceeds that clamp, so no min() is needed.
        """
        return (self._read_req_prod() - self._req_cons) & RING_IDX_MASK

    def take_request(self) -> bytes | None:
        """Copy out the next published request and advance, or None if there is none.

        Validate and use only the returned copy: the frontend can rewrite the slot at
        any time (XSA-155).
        """
        if self._failure is not None:
            raise self._failure
        if self._req_cons == self._req_prod_seen and self._read_req_prod() == self._req_cons:
            return None
        request = self._shared.slot(self._req_cons).tobytes()
        self._req_cons = (self._req_cons + 1) & RING_IDX_MASK
        return request

    def new_response(self) -> memoryview:
        """Zero the slot at ``rsp_prod_pvt``, advance, return the slot to fill in."""
        if self.unanswered_requests == 0:
            raise RingFullError("every request taken has been answered")
        slot = self._shared.cleared_slot(self._rsp_prod_pvt)
        self._rsp_prod_pvt = (self._rsp_prod_pvt + 1) & RING_IDX_MASK
        return slot

    def push_responses(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: publish, return whether to notify."""
        old, new = self._rsp_prod_published, self._rsp_prod_pvt
        self._shared.store(_RSP_PROD, new)
        self._rsp_prod_published = new
        return _notify_needed(old, new, self._shared.load(_RSP_EVENT))

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: True if requests are pending.

        When it returns False it has asked the frontend to notify on the next request.
        """
        if self.unconsumed_requests():
            return True
        self._shared.store(_REQ_EVENT, self._req_cons + 1)
        return self.unconsumed_requests() > 0

    def _read_req_prod(self) -> int:
        if self._failure is not None:
            raise self._failure
        seen = self._req_prod_seen
        # The frontend cannot reuse a slot before consuming its published response,
        # so it is at most one ring ahead of the responses we published. This is
        # stricter than RING_REQUEST_PROD_OVERFLOW (which measures from rsp_prod_pvt
        # and lets req_prod move backwards).
        limit = (self._rsp_prod_published + self.size) & RING_IDX_MASK
        prod = self._shared.load(_REQ_PROD)
        if (prod - seen) & RING_IDX_MASK > (limit - seen) & RING_IDX_MASK:
            self._failure = ProtocolError(
                errno.EIO,
                f"frontend published req_prod {prod:#x} outside "
                f"[{seen:#x}, {limit:#x}] (last seen, responses published + ring size)",
            )
            raise self._failure
        self._req_prod_seen = prod
        return prod
