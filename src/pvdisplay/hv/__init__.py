"""Hypervisor services as the display code sees them: grants, event channels, buffer handles.

The calls mirror the Linux user-space devices a real Xen driver domain uses:

- `GrantTable.alloc/grant/share`: gntalloc IOCTL_GNTALLOC_ALLOC_GREF
- `GrantTable.end_access`: gntalloc DEALLOC_GREF
- `GrantTable.map`, `Mapping.close`: gntdev MAP_GRANT_REF + mmap, munmap + UNMAP_GRANT_REF
- `EventChannels`: evtchn BIND_UNBOUND_PORT, BIND_INTERDOMAIN, NOTIFY, UNBIND, read()
- `Buffers`: the roles of gntdev's DMABUF_EXP_FROM_REFS, EXP_WAIT_RELEASED, IMP_TO_REFS
  and IMP_RELEASE. Kernels without CONFIG_XEN_GNTDEV_DMABUF (Debian's) have none of
  them, so `hv.xen` sends gntdev descriptors instead (docs/hypervisor.md, "Real Xen").

Every failure is a `HypervisorError` carrying the errno the Linux driver would return.
`pvdisplay.hv.local` implements these protocols on one Linux host, `pvdisplay.hv.xen` over
Linux's Xen devices. `Mapping` and `BufferHandle` are `pvdisplay.ipc`'s, so processes
that only map pages (outputs) need nothing from here.
"""

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# Re-exported: every caller of the hypervisor services deals in these.
from pvdisplay.ipc.interfaces import BufferHandle as BufferHandle
from pvdisplay.ipc.interfaces import Mapping as Mapping
from pvdisplay.wire.displif import PAGE_SIZE as PAGE_SIZE
from pvdisplay.wire.errors import HypervisorError as HypervisorError

DOMID_FIRST_RESERVED = 0x7FF0
"""Domain ids at or above this are reserved by Xen (DOMID_SELF, DOMID_IO, ...)."""


class GuestMemory(Mapping, Protocol):
    """Grantable memory owned by this domain (one allocation, mapped writable here).

    Closing it frees the allocation and ends every grant of it (deferred while mapped).
    """

    @property
    def pages(self) -> int: ...


class GrantTable(Protocol):
    """Granting own pages (gntalloc) and mapping other domains' grants (gntdev)."""

    def alloc(self, pages: int) -> GuestMemory:
        """Allocate grantable memory; ENOMEM over the domain's memory limit."""
        ...

    def grant(
        self, domid: int, memory: GuestMemory, pages: Sequence[int], readonly: bool = False
    ) -> list[int]:
        """Grant `pages` (indexes into `memory`) to `domid`, one ref per page, in order.

        Portable code grants all of `memory`: the local hypervisor isolates whole memory
        objects, not pages, and refuses anything less with EINVAL.
        """
        ...

    def share(
        self, domid: int, pages: int, readonly: bool = False
    ) -> tuple[GuestMemory, list[int]]:
        """Allocate and grant in one call (IOCTL_GNTALLOC_ALLOC_GREF)."""
        ...

    def end_access(self, refs: Sequence[int]) -> list[int]:
        """End grants; returns the refs still mapped, whose ending is deferred until unmapped."""
        ...

    def map(self, domid: int, refs: Sequence[int], writable: bool = True) -> Mapping:
        """Map `refs` granted by `domid` as one contiguous range, in ref order."""
        ...


class PortState(enum.Enum):
    """EVTCHNSTAT_* as far as interdomain channels go."""

    UNBOUND = "unbound"
    INTERDOMAIN = "interdomain"


@dataclass(frozen=True)
class ChannelStatus:
    """EVTCHNOP_status for one local port."""

    state: PortState
    remote_domid: int
    remote_port: int | None


class EventChannels(Protocol):
    """Interdomain event channels (evtchn device).

    Notifications coalesce like Xen's pending bit. A port whose peer unbinds or dies
    turns UNBOUND and is reported once by `pending()`; notifying it is silently dropped,
    as EVTCHNOP_send does for an unbound port.
    """

    def bind_unbound_port(self, remote_domid: int) -> int: ...
    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int: ...
    def notify(self, port: int) -> None: ...
    def unbind(self, port: int) -> None: ...
    def pending(self, timeout: float | None = None) -> list[int]:
        """Ports that fired since last asked; blocks up to `timeout` seconds (None: forever)."""
        ...

    def status(self, port: int) -> ChannelStatus:
        """The port as the last `pending()` (or a later call) left it; `pending()` reports
        every change of it. Asking costs no system call, so a backend can check each port
        that fires."""
        ...

    def fileno(self) -> int:
        """Readable when `pending()` has something; for selectors and asyncio.add_reader."""
        ...


@dataclass(frozen=True)
class ImportedBuffer:
    """A local buffer whose pages were granted to `domid` (IMP_TO_REFS)."""

    id: str
    domid: int
    refs: list[int]


class Buffers(Protocol):
    """Zero-copy buffer handles (gntdev dma-buf, the xen-zcopy role)."""

    def export_from_refs(
        self, domid: int, refs: Sequence[int], writable: bool = True
    ) -> BufferHandle:
        """Map `refs` granted by `domid` into a handle other local processes can map."""
        ...

    def wait_released(self, handle_id: str, timeout: float) -> None:
        """Block until every copy and mapping of an exported handle is gone.

        ETIMEDOUT if something still holds it after `timeout` seconds. A handle that is
        already released (or was never exported here) returns at once, as gntdev's
        ENOENT is documented "must not be treated as error".
        """
        ...

    def import_to_refs(
        self, handle: BufferHandle, domid: int, readonly: bool = False
    ) -> ImportedBuffer:
        """Grant every page of a local buffer handle to `domid`."""
        ...

    def release(self, import_id: str) -> list[int]:
        """End an import's grants; returns refs still mapped (their ending is deferred)."""
        ...


class Hypervisor(Protocol):
    """What a domain's code gets: its id and the three services."""

    @property
    def domid(self) -> int: ...
    @property
    def grants(self) -> GrantTable: ...
    @property
    def events(self) -> EventChannels: ...
    @property
    def buffers(self) -> Buffers: ...
    def close(self) -> None: ...
