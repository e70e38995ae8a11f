"""Sequentially consistent loads and stores of shared-memory indices, through libatomic.

Rings shared with another domain or process (Xen's ``ring.h`` rings, the displif and
kbdif event pages, virtio split virtqueues) publish their indices with barriers around
them. CPython has none, so every index access goes through libatomic's
``__atomic_load_N`` / ``__atomic_store_N`` at ``__ATOMIC_SEQ_CST``, called with ctypes:

* the store is at least a release store: bytes written before it are visible first;
* the load is at least an acquire load: bytes read after it are not read early;
* a store followed by a load is never reordered (the full barrier ``xen_mb`` and
  virtio's EVENT_IDX re-check need; x86 TSO does not give it for free). On x86-64
  libatomic's store is an ``xchg``, on arm64 the pair is ``stlr``/``ldar``.

The ctypes call is opaque to the C compiler that built CPython, so the memcpy of the
bytes around an index access cannot move across it either. Values are in native byte
order, as the C peer on the same machine sees them.
"""

import ctypes
import mmap
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

# Not imported from `pvdisplay.wire.layout`, which builds its event-page indices on this.
WritableBuffer: TypeAlias = bytearray | memoryview | mmap.mmap

_SEQ_CST: Final = 5  # __ATOMIC_SEQ_CST

# Debian package libatomic1 (pulled in by gcc). Its 2- and 4-byte loads and stores are
# the same lock-free instructions gcc emits inline, so they interoperate with a C peer.
_libatomic = ctypes.CDLL("libatomic.so.1")


def _load(name: str, result: type[ctypes.c_uint16 | ctypes.c_uint32]) -> Callable[..., int]:
    function = getattr(_libatomic, name)
    function.restype = result
    loaded: Callable[..., int] = function
    return loaded


def _store(name: str) -> Callable[..., None]:
    function = getattr(_libatomic, name)
    function.restype = None
    stored: Callable[..., None] = function
    return stored


# width in bytes -> (load, store, value mask)
_ACCESS: Final = {
    2: (_load("__atomic_load_2", ctypes.c_uint16), _store("__atomic_store_2"), 0xFFFF),
    4: (_load("__atomic_load_4", ctypes.c_uint32), _store("__atomic_store_4"), 0xFFFF_FFFF),
}


class AtomicIndices:
    """Seq-cst loads and stores of the `width`-byte unsigned fields at `offsets` of `area`.

    Holding the object pins `area` (an mmap cannot be closed, a bytearray cannot be
    resized) until `release()`. Each field must be naturally aligned in memory, not only
    within `area`: ValueError otherwise, and when `area` is read-only or a field does not
    fit. Using a released object raises ValueError.
    """

    def __init__(self, area: WritableBuffer, offsets: Iterable[int], width: int) -> None:
        self._load, self._store, self._mask = _ACCESS[width]
        view = memoryview(area).cast("B")
        if view.readonly:
            raise ValueError("atomic indices need a writable area")
        self._pin: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * len(view)).from_buffer(
            view
        )
        base = ctypes.addressof(self._pin)
        self._pointers: dict[int, ctypes.c_void_p] = {}
        for offset in offsets:
            if not 0 <= offset <= len(view) - width:
                raise ValueError(f"a {width}-byte field at {offset} is outside {len(view)} bytes")
            if (base + offset) % width:
                raise ValueError(f"the field at {offset} is not {width}-byte aligned in memory")
            self._pointers[offset] = ctypes.c_void_p(base + offset)

    def release(self) -> None:
        """Unpin the area; no access can follow."""
        # Forget the raw pointers before unpinning, so none can outlive the buffer.
        self._pointers = {}
        self._pin = None

    def load(self, offset: int) -> int:
        try:
            return self._load(self._pointers[offset], _SEQ_CST)
        except KeyError:
            raise ValueError(f"no index at {offset}: never declared, or released") from None

    def store(self, offset: int, value: int) -> None:
        try:
            self._store(self._pointers[offset], value & self._mask, _SEQ_CST)
        except KeyError:
            raise ValueError(f"no index at {offset}: never declared, or released") from None
