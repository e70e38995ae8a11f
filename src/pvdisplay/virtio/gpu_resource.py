"""A virtio-gpu 2D resource: host pixels in a shareable buffer, filled from guest pages.

virtio-gpu 2D keeps every resource on the host. The guest attaches backing pages (a
scatter list of guest physical ranges) and asks for rectangles to be copied from them
(TRANSFER_TO_HOST_2D); the host copy is what scanouts show. Here the host copy lives in
a memfd (`SharedBuffer`), so planes, snapshots and viewers map it without copying.

Backing ranges are checked against the guest memory map when attached, and a transfer
against the resource and the backing before a byte moves. Failures raise
`ResourceError`, which carries the VIRTIO_GPU_RESP_ERR_* answer.
"""

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.memory import PAGE_SIZE
from pvdisplay.virtio import VirtioError
from pvdisplay.virtio.gpu_wire import BYTES_PER_PIXEL, FOURCC, CtrlType, Format
from pvdisplay.virtio.memory import GuestMemoryMap


class ResourceError(VirtioError):
    """A command cannot be carried out; `code` is the VIRTIO_GPU_RESP_ERR_* answer."""

    def __init__(self, code: CtrlType, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class GpuRect:
    """`struct virtio_gpu_rect`."""

    x: int
    y: int
    width: int
    height: int

    def inside(self, width: int, height: int) -> bool:
        """Whether the rectangle is non-empty and lies within a `width`x`height` area."""
        return (
            self.width > 0
            and self.height > 0
            and self.x + self.width <= width
            and self.y + self.height <= height
        )

    def clip(self, bounds: "GpuRect") -> "GpuRect | None":
        """The part of this rectangle inside `bounds`, relative to `bounds`' origin;
        None when they do not overlap."""
        left, top = max(self.x, bounds.x), max(self.y, bounds.y)
        right = min(self.x + self.width, bounds.x + bounds.width)
        bottom = min(self.y + self.height, bounds.y + bounds.height)
        if right <= left or bottom <= top:
            return None
        return GpuRect(left - bounds.x, top - bounds.y, right - left, bottom - top)

    def union(self, other: "GpuRect") -> "GpuRect":
        """The smallest rectangle holding both."""
        left, top = min(self.x, other.x), min(self.y, other.y)
        right = max(self.x + self.width, other.x + other.width)
        bottom = max(self.y + self.height, other.y + other.height)
        return GpuRect(left, top, right - left, bottom - top)


def host_bytes(width: int, height: int) -> int:
    """What a `width`x`height` resource holds on the host: its pixels in whole pages."""
    pages = -(-width * height * BYTES_PER_PIXEL // PAGE_SIZE)
    return pages * PAGE_SIZE


class Resource:
    """One RESOURCE_CREATE_2D resource: `height` rows of `stride` bytes in a memfd.

    Raises OSError when the host cannot provide the memfd or its mapping.
    """

    def __init__(self, resource_id: int, fmt: Format, width: int, height: int) -> None:
        self.resource_id = resource_id
        self.format = fmt
        self.width = width
        self.height = height
        self.stride = width * BYTES_PER_PIXEL
        self.size = self.stride * height
        self.host_bytes = host_bytes(width, height)
        self.handle = SharedBuffer.allocate(self.host_bytes // PAGE_SIZE)
        try:
            self._mapping = self.handle.map(writable=True)
        except BaseException:
            self.handle.close()
            raise
        self._pixels = np.frombuffer(self._mapping.view(), np.uint8, count=self.size)
        self.backing: list[tuple[int, int]] | None = None
        self._sources: list[npt.NDArray[np.uint8]] = []
        self._starts: list[int] = []
        self.copied = 0
        """Bytes copied in by transfers since the counter was last reset."""

    @property
    def fourcc(self) -> str:
        return FOURCC[self.format]

    @property
    def backing_length(self) -> int:
        return sum(length for _, length in self.backing or ())

    def attach(self, entries: Sequence[tuple[int, int]], memory: GuestMemoryMap) -> None:
        """Use guest ranges (addr, length), concatenated, as the resource's backing."""
        merged: list[tuple[int, int]] = []
        for addr, length in entries:
            if merged and merged[-1][0] + merged[-1][1] == addr:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((addr, length))
        self.backing = merged
        try:
            self.resolve(memory)
        except VirtioError:
            self.detach()
            raise

    def detach(self) -> None:
        self.backing = None
        self._sources = []
        self._starts = []

    def resolve(self, memory: GuestMemoryMap) -> None:
        """Look the backing up in the guest memory map; VirtioError if it is not RAM."""
        sources: list[npt.NDArray[np.uint8]] = []
        starts: list[int] = []
        position = 0
        for addr, length in self.backing or ():
            view = memory.view(addr, length)
            if length:
                starts.append(position)
                sources.append(np.frombuffer(view, np.uint8))
            position += length
        self._sources, self._starts = sources, starts

    def transfer(self, rect: GpuRect, offset: int) -> int:
        """TRANSFER_TO_HOST_2D: copy `rect` in from the backing, rows `stride` apart from
        byte `offset`; returns the bytes copied."""
        if self.backing is None:
            raise ResourceError(
                CtrlType.RESP_ERR_UNSPEC, f"resource {self.resource_id} has no backing"
            )
        if not rect.inside(self.width, self.height):
            raise ResourceError(
                CtrlType.RESP_ERR_INVALID_PARAMETER, f"transfer {rect} outside the resource"
            )
        row = rect.width * BYTES_PER_PIXEL
        end = offset + self.stride * (rect.height - 1) + row
        if end > self.backing_length:
            raise ResourceError(
                CtrlType.RESP_ERR_INVALID_PARAMETER,
                f"transfer reads to byte {end} of a {self.backing_length}-byte backing",
            )
        first = rect.y * self.stride + rect.x * BYTES_PER_PIXEL
        if row == self.stride:
            self._gather(offset, first, row * rect.height)
        else:
            for line in range(rect.height):
                self._gather(offset + line * self.stride, first + line * self.stride, row)
        copied = row * rect.height
        self.copied += copied
        return copied

    def read(self, rect: GpuRect) -> bytes:
        """A copy of `rect`'s pixels, rows packed (`width` * 4 bytes each)."""
        rows = self._pixels.reshape(self.height, self.stride)
        left = rect.x * BYTES_PER_PIXEL
        return rows[
            rect.y : rect.y + rect.height, left : left + rect.width * BYTES_PER_PIXEL
        ].tobytes()

    def close(self) -> None:
        self.detach()
        del self._pixels
        self._mapping.close()
        self.handle.close()

    def _gather(self, source: int, destination: int, length: int) -> None:
        index = bisect.bisect_right(self._starts, source) - 1
        while length:
            chunk = self._sources[index]
            start = source - self._starts[index]
            count = min(length, len(chunk) - start)
            np.copyto(self._pixels[destination : destination + count], chunk[start : start + count])
            source, destination, length = source + count, destination + count, length - count
            index += 1
