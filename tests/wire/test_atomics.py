"""Seq-cst index access: values land where a C reader expects them; misuse is refused."""

import mmap
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvdisplay.wire.atomics import AtomicIndices


@given(st.sampled_from([2, 4]), st.integers(0, 2**40), st.integers(0, 7))
def test_stores_write_native_bytes_and_loads_read_them(width: int, value: int, slot: int) -> None:
    page = mmap.mmap(-1, 4096)
    offset = slot * width
    indices = AtomicIndices(page, [offset], width)
    indices.store(offset, value)
    mask = (1 << (8 * width)) - 1
    code = {2: "=H", 4: "=I"}[width]
    assert struct.unpack_from(code, page, offset)[0] == value & mask
    struct.pack_into(code, page, offset, (value * 7) & mask)
    assert indices.load(offset) == (value * 7) & mask
    indices.release()
    page.close()


def test_misuse_is_refused() -> None:
    page = mmap.mmap(-1, 4096)
    with pytest.raises(ValueError, match="aligned"):
        AtomicIndices(page, [2], 4)
    with pytest.raises(ValueError, match="outside"):
        AtomicIndices(page, [4094], 4)
    with pytest.raises(ValueError, match="writable"):
        AtomicIndices(memoryview(bytes(64)), [0], 4)
    indices = AtomicIndices(page, [0], 4)
    with pytest.raises(ValueError, match="never declared"):
        indices.load(8)
    with pytest.raises(BufferError):
        page.close()  # pinned while the indices are alive
    indices.release()
    with pytest.raises(ValueError, match="released"):
        indices.store(0, 1)
    page.close()
