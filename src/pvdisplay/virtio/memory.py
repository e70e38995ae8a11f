"""Guest memory as a vhost-user backend sees it: regions of guest RAM mapped here.

QEMU's SET_MEM_TABLE describes each RAM region three ways: its guest physical address,
its size, and the address QEMU itself mapped it at (vring addresses arrive in QEMU's
address space). The backend mmaps the region's file descriptor and builds a `Region`
per entry. Every guest-supplied address then goes through `GuestMemoryMap.view`, which
returns a zero-copy view or raises `VirtioError`: nothing outside a region, and nothing
straddling two regions (they need not be adjacent in this process), is ever touched.
"""

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from pvdisplay.virtio import VirtioError
from pvdisplay.wire.layout import WritableBuffer

MAX_ADDRESS = (1 << 64) - 1


@dataclass(frozen=True)
class Region:
    """One RAM region: `size` bytes at guest physical `guest_addr`, QEMU virtual `user_addr`.

    `buffer` holds exactly the region's bytes (for a vhost-user region, the mmap of its fd
    sliced from `mmap_offset`); it must be writable for the device to answer requests.
    """

    guest_addr: int
    size: int
    user_addr: int
    buffer: WritableBuffer


class GuestMemoryMap:
    """Regions of guest memory, looked up by guest physical or QEMU virtual address.

    Views handed out keep their region's buffer exported: drop them, and `close()` the
    map, before unmapping the regions (`mmap.close()` raises BufferError otherwise).
    """

    def __init__(self, regions: Sequence[Region]) -> None:
        ordered = sorted(regions, key=lambda region: region.guest_addr)
        self._views: list[memoryview] = []
        for region in ordered:
            view = memoryview(region.buffer).cast("B")
            if region.size < 1 or len(view) != region.size:
                raise ValueError(f"region buffer is {len(view)} bytes, region {region.size}")
            for addr in (region.guest_addr, region.user_addr):
                if addr < 0 or addr + region.size - 1 > MAX_ADDRESS:
                    raise ValueError(f"region at {addr:#x} leaves the 64-bit address space")
            self._views.append(view)
        for before, after in itertools.pairwise(ordered):
            if before.guest_addr + before.size > after.guest_addr:
                raise ValueError(
                    f"regions at {before.guest_addr:#x} and {after.guest_addr:#x} overlap"
                )
        self._regions = ordered
        self._starts = [region.guest_addr for region in ordered]
        self._by_user = sorted(range(len(ordered)), key=lambda i: ordered[i].user_addr)
        self._user_starts = [ordered[i].user_addr for i in self._by_user]

    @property
    def regions(self) -> list[Region]:
        return list(self._regions)

    def view(self, gpa: int, length: int) -> memoryview:
        """`length` bytes of guest memory from guest physical address `gpa`, not copied.

        Raises VirtioError unless the whole range lies inside one region. A view of
        zero bytes touches no memory and is always granted.
        """
        if length == 0:
            return memoryview(bytearray())
        index = bisect.bisect_right(self._starts, gpa) - 1
        if index < 0 or length < 0:
            raise VirtioError(f"guest range {gpa:#x}+{length:#x} is not guest RAM")
        region = self._regions[index]
        start = gpa - region.guest_addr
        if start + length > region.size:
            raise VirtioError(f"guest range {gpa:#x}+{length:#x} is not inside one RAM region")
        return self._views[index][start : start + length]

    def user_to_guest(self, user_addr: int) -> int:
        """The guest physical address QEMU maps at `user_addr` (vring addresses)."""
        position = bisect.bisect_right(self._user_starts, user_addr) - 1
        if position >= 0:
            region = self._regions[self._by_user[position]]
            if user_addr - region.user_addr < region.size:
                return region.guest_addr + user_addr - region.user_addr
        raise VirtioError(f"QEMU address {user_addr:#x} is in no RAM region")

    def close(self) -> None:
        """Forget the regions; views handed out stay valid until dropped."""
        for view in self._views:
            view.release()
        self._views = []
        self._regions = []
        self._starts = []
        self._by_user = []
        self._user_starts = []
