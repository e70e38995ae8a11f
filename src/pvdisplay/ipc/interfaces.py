"""What a mapped range of pages and a zero-copy buffer handle offer, whoever made them.

The emulated hypervisor and real Xen each implement these (`ipc.memory.SharedMapping`,
`ipc.buffers.SharedBuffer`, and `hv.xen`'s grant mappings), so outputs and planes can
use pages without knowing where they came from. `pvdisplay.hv` re-exports both.
"""

import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

import numpy as np
import numpy.typing as npt


class Mapping(Protocol):
    """Pages mapped into this process as one contiguous range.

    `view()` and `array()` share the pages; nothing is copied. `close()` unmaps and
    raises `HypervisorError(EBUSY)` while any view or array of it is still alive, so
    a dangling numpy array can never point at unmapped memory.
    """

    @property
    def address(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def writable(self) -> bool: ...
    def view(self) -> memoryview: ...
    def array(
        self, dtype: npt.DTypeLike = np.uint8, shape: Sequence[int] | None = None
    ) -> npt.NDArray[np.generic]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BufferHandle(Protocol):
    """A zero-copy buffer (dma-buf role): fd-backed pages any local process can map.

    `id` is an unguessable name (128 random bits) safe to hand across a trust boundary.
    `send()` passes the handle to another process over a unix socket (SCM_RIGHTS).
    """

    @property
    def id(self) -> str: ...
    @property
    def pages(self) -> int: ...
    @property
    def readonly(self) -> bool: ...
    def map(self, writable: bool = False) -> Mapping: ...
    def send(self, sock: socket.socket) -> None: ...
    def close(self) -> None: ...
