"""GuestMemoryMap: guest addresses resolve to views of exactly one region, or fail."""

import mmap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.virtio import VirtioError
from pvdisplay.virtio.memory import GuestMemoryMap, Region

# Two RAM regions with a hole between them, mapped at unrelated QEMU addresses, the
# second one adjacent in guest space to a third.
LAYOUT = [(0x1000, 0x3000, 0x7F00_0000_0000), (0x10000, 0x2000, 0x5500_0000_0000)]
ADJACENT = (0x12000, 0x1000, 0x6000_0000_0000)


def pattern(gpa: int) -> int:
    """The byte every test region holds at guest address `gpa`."""
    return (gpa * 7 + (gpa >> 8)) & 0xFF


def regions(layout: list[tuple[int, int, int]]) -> list[Region]:
    return [
        Region(guest, size, user, bytearray(pattern(a) for a in range(guest, guest + size)))
        for guest, size, user in layout
    ]


def inside_one(gpa: int, length: int, layout: list[tuple[int, int, int]]) -> bool:
    return any(g <= gpa and gpa + length <= g + size for g, size, _ in layout)


def test_view_aliases_the_region_buffer() -> None:
    memory = GuestMemoryMap(regions(LAYOUT))
    view = memory.view(0x10010, 4)
    view[:] = b"abcd"
    assert bytes(memory.regions[1].buffer[0x10:0x14]) == b"abcd"
    assert bytes(memory.view(0x10010, 4)) == b"abcd"


def test_view_works_over_a_real_shared_mapping() -> None:
    with mmap.mmap(-1, 0x2000) as backing:
        memory = GuestMemoryMap([Region(0x4000_0000, 0x1000, 0x1000, memoryview(backing)[0x1000:])])
        memory.view(0x4000_0FFC, 4)[:] = b"\x01\x02\x03\x04"
        assert backing[0x1FFC:0x2000] == b"\x01\x02\x03\x04"
        memory.close()


@pytest.mark.parametrize(
    ("gpa", "length"),
    [
        (0x0FFF, 2),  # starts before the first region
        (0x3FFF, 2),  # runs off the end of the first region
        (0x4000, 1),  # in the hole
        (0x11FFF, 2),  # crosses into the adjacent region
        (0x1000, -1),
        (-1, 4),
        (1 << 64, 1),
        (0x1000, 1 << 64),
    ],
)
def test_ranges_outside_one_region_are_refused(gpa: int, length: int) -> None:
    memory = GuestMemoryMap(regions([*LAYOUT, ADJACENT]))
    with pytest.raises(VirtioError) as caught:
        memory.view(gpa, length)
    assert caught.value.status < 0


def test_zero_length_view_needs_no_memory() -> None:
    memory = GuestMemoryMap(regions(LAYOUT))
    view = memory.view(0xDEAD_0000, 0)
    assert len(view) == 0
    view[:0] = b""


@given(gpa=st.integers(0, 0x14000), length=st.integers(0, 0x4000))
@settings(max_examples=300)
def test_view_matches_a_model_of_the_regions(gpa: int, length: int) -> None:
    layout = [*LAYOUT, ADJACENT]
    memory = GuestMemoryMap(regions(layout))
    if length and not inside_one(gpa, length, layout):
        with pytest.raises(VirtioError):
            memory.view(gpa, length)
        return
    expected = bytes(pattern(address) for address in range(gpa, gpa + length))
    assert bytes(memory.view(gpa, length)) == expected


def test_user_addresses_translate_to_guest_addresses() -> None:
    memory = GuestMemoryMap(regions(LAYOUT))
    assert memory.user_to_guest(0x7F00_0000_0000) == 0x1000
    assert memory.user_to_guest(0x7F00_0000_2FFF) == 0x3FFF
    assert memory.user_to_guest(0x5500_0000_0100) == 0x10100
    for outside in (0x7F00_0000_3000, 0x54FF_FFFF_FFFF, 0, -5):
        with pytest.raises(VirtioError):
            memory.user_to_guest(outside)


@pytest.mark.parametrize(
    "layout",
    [
        [(0x1000, 0x2000, 0), (0x2000, 0x1000, 0x10000)],  # overlapping guest ranges
        [((1 << 64) - 0x1000, 0x2000, 0)],  # past the top of the address space
    ],
)
def test_inconsistent_tables_are_refused(layout: list[tuple[int, int, int]]) -> None:
    with pytest.raises(ValueError):
        GuestMemoryMap(regions(layout))


def test_region_size_must_match_its_buffer() -> None:
    with pytest.raises(ValueError, match="region buffer is 16 bytes"):
        GuestMemoryMap([Region(0, 32, 0, bytearray(16))])
