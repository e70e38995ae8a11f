"""The guest's display buffers as one connector's readers map them.

A guest that double- or triple-buffers flips between the same few buffers, so each is
asked for once (one `get` on the planes socket) and stays mapped, zero copy, while it is
among the connector's last `MAPPED_PER_CONNECTOR`. A buffer pushed out is closed once no
reader (a worker thread comparing its pages) holds it any more.
"""

from dataclasses import dataclass
from typing import Final

from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.memory import SharedMapping

MAPPED_PER_CONNECTOR: Final = 3


@dataclass
class MappedBuffer:
    """A mapped buffer; closed once retired and no reader holds it."""

    handle: SharedBuffer
    mapping: SharedMapping
    readers: int = 0
    retired: bool = False

    def retire(self) -> None:
        self.retired = True
        if self.readers == 0:
            self.mapping.close()
            self.handle.close()

    def acquire(self) -> SharedMapping:
        """The mapping, kept open until `release` even if the buffer is retired meanwhile."""
        self.readers += 1
        return self.mapping

    def release(self) -> None:
        self.readers -= 1
        if self.retired:
            self.retire()


class ConnectorBuffers:
    """One connector's mapped buffers by `buffer_id`, the most recently added last."""

    def __init__(self) -> None:
        self._mapped: dict[str, MappedBuffer] = {}

    def get(self, buffer_id: str) -> MappedBuffer | None:
        return self._mapped.get(buffer_id)

    def add(self, handle: SharedBuffer) -> MappedBuffer:
        """Map `handle` (now owned here), retiring the oldest beyond the limit."""
        mapped = self._mapped[handle.id] = MappedBuffer(handle, handle.map())
        while len(self._mapped) > MAPPED_PER_CONNECTOR:
            self._mapped.pop(next(iter(self._mapped))).retire()
        return mapped

    def retire_all(self) -> None:
        for mapped in self._mapped.values():
            mapped.retire()
        self._mapped.clear()
