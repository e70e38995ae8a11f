"""The Linux Xen devices' user-space ABI: ioctl numbers and argument structs (sans-IO).

Mirrors `/usr/include/xen/sys/{gntdev,gntalloc,evtchn,xenbus_dev}.h` from Debian's
libxen-dev; tests/c/xen_sys_layout.c prints the compiled numbers and layouts and
tests/hv/test_hv_xen_layout.py holds every one here to them. Nothing in this module
touches a device: the adapters (`events`, `grants`, `buffers`) pack these structs into
buffers, hand them to `ioctl(2)` and unpack what the kernel wrote back.

Ioctl numbers use the asm-generic encoding (x86 and Arm; the architectures Xen
user space runs on here): `_IOC(_IOC_NONE, type, nr, size)` is
`size << 16 | type << 8 | nr`. The Xen headers declare every ioctl `_IOC_NONE`
although most pass data both ways; only the number matters to the kernel.

Several structs end in a one-element array the caller extends (`refs[1]`,
`gref_ids[1]`): their `Layout` covers the C struct (the first element included, as
`sizeof` does), and the `*_request` helpers build the longer buffer. Requests are
built here only for the calls the adapters make; the rest of the ABI (grant copy,
unmap notification, the dma-buf calls, RESTRICT_DOMID) is mirrored and proven so that
using it later starts from checked numbers.
"""

import struct
from collections.abc import Sequence

from pvdisplay.wire.layout import Layout

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_SIZEMASK = (1 << 14) - 1


def _ioc_none(kind: str, nr: int, size: int) -> int:
    if not 0 <= size <= _IOC_SIZEMASK:
        raise ValueError(f"ioctl argument of {size} bytes does not fit the size field")
    return size << _IOC_SIZESHIFT | ord(kind) << _IOC_TYPESHIFT | nr << _IOC_NRSHIFT


# -- gntdev.h ---------------------------------------------------------------------------

GNTDEV_GRANT_REF = Layout("struct ioctl_gntdev_grant_ref", ("domid", "I"), ("ref", "I"))
GNTDEV_MAP_GRANT_REF = Layout(
    "struct ioctl_gntdev_map_grant_ref",
    ("count", "I"),
    ("pad", "I"),
    ("index", "Q"),
    ("refs[0].domid", "I"),
    ("refs[0].ref", "I"),
)
GNTDEV_UNMAP_GRANT_REF = Layout(
    "struct ioctl_gntdev_unmap_grant_ref", ("index", "Q"), ("count", "I"), ("pad", "I")
)
GNTDEV_GET_OFFSET_FOR_VADDR = Layout(
    "struct ioctl_gntdev_get_offset_for_vaddr",
    ("vaddr", "Q"),
    ("offset", "Q"),
    ("count", "I"),
    ("pad", "I"),
)
GNTDEV_SET_MAX_GRANTS = Layout("struct ioctl_gntdev_set_max_grants", ("count", "I"))
GNTDEV_UNMAP_NOTIFY = Layout(
    "struct ioctl_gntdev_unmap_notify",
    ("index", "Q"),
    ("action", "I"),
    ("event_channel_port", "I"),
)
# The source and dest unions are described by their `foreign` arm; `virt` is the same
# eight bytes read as a pointer.
GNTDEV_GRANT_COPY_SEGMENT = Layout(
    "struct ioctl_gntdev_grant_copy_segment",
    ("source.foreign.ref", "I"),
    ("source.foreign.offset", "H"),
    ("source.foreign.domid", "H"),
    ("dest.foreign.ref", "I"),
    ("dest.foreign.offset", "H"),
    ("dest.foreign.domid", "H"),
    ("len", "H"),
    ("flags", "H"),
    ("status", "h"),
    ("", "2x"),
)
GNTDEV_GRANT_COPY = Layout(
    "struct ioctl_gntdev_grant_copy", ("count", "I"), ("", "4x"), ("segments", "Q")
)
GNTDEV_DMABUF_EXP_FROM_REFS = Layout(
    "struct ioctl_gntdev_dmabuf_exp_from_refs",
    ("flags", "I"),
    ("count", "I"),
    ("fd", "I"),
    ("domid", "I"),
    ("refs[0]", "I"),
)
GNTDEV_DMABUF_EXP_WAIT_RELEASED = Layout(
    "struct ioctl_gntdev_dmabuf_exp_wait_released", ("fd", "I"), ("wait_to_ms", "I")
)
GNTDEV_DMABUF_IMP_TO_REFS = Layout(
    "struct ioctl_gntdev_dmabuf_imp_to_refs",
    ("fd", "I"),
    ("count", "I"),
    ("domid", "I"),
    ("reserved", "I"),
    ("refs[0]", "I"),
)
GNTDEV_DMABUF_IMP_RELEASE = Layout(
    "struct ioctl_gntdev_dmabuf_imp_release", ("fd", "I"), ("reserved", "I")
)

IOCTL_GNTDEV_MAP_GRANT_REF = _ioc_none("G", 0, GNTDEV_MAP_GRANT_REF.struct.size)
IOCTL_GNTDEV_UNMAP_GRANT_REF = _ioc_none("G", 1, GNTDEV_UNMAP_GRANT_REF.struct.size)
IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR = _ioc_none("G", 2, GNTDEV_GET_OFFSET_FOR_VADDR.struct.size)
IOCTL_GNTDEV_SET_MAX_GRANTS = _ioc_none("G", 3, GNTDEV_SET_MAX_GRANTS.struct.size)
IOCTL_GNTDEV_SET_UNMAP_NOTIFY = _ioc_none("G", 7, GNTDEV_UNMAP_NOTIFY.struct.size)
IOCTL_GNTDEV_GRANT_COPY = _ioc_none("G", 8, GNTDEV_GRANT_COPY.struct.size)
IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS = _ioc_none("G", 9, GNTDEV_DMABUF_EXP_FROM_REFS.struct.size)
IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED = _ioc_none(
    "G", 10, GNTDEV_DMABUF_EXP_WAIT_RELEASED.struct.size
)
IOCTL_GNTDEV_DMABUF_IMP_TO_REFS = _ioc_none("G", 11, GNTDEV_DMABUF_IMP_TO_REFS.struct.size)
IOCTL_GNTDEV_DMABUF_IMP_RELEASE = _ioc_none("G", 12, GNTDEV_DMABUF_IMP_RELEASE.struct.size)

UNMAP_NOTIFY_CLEAR_BYTE = 0x1
"""gntdev.h and gntalloc.h both define it: zero the byte at the notify index on unmap."""
UNMAP_NOTIFY_SEND_EVENT = 0x2
"""gntdev.h and gntalloc.h both define it: notify the event channel on unmap."""
GNTDEV_DMA_FLAG_WC = 1 << 0
GNTDEV_DMA_FLAG_COHERENT = 1 << 1

# -- gntalloc.h -------------------------------------------------------------------------

GNTALLOC_ALLOC_GREF = Layout(
    "struct ioctl_gntalloc_alloc_gref",
    ("domid", "H"),
    ("flags", "H"),
    ("count", "I"),
    ("index", "Q"),
    ("gref_ids[0]", "I"),
    ("", "4x"),
)
GNTALLOC_DEALLOC_GREF = Layout(
    "struct ioctl_gntalloc_dealloc_gref", ("index", "Q"), ("count", "I"), ("", "4x")
)
GNTALLOC_UNMAP_NOTIFY = Layout(
    "struct ioctl_gntalloc_unmap_notify",
    ("index", "Q"),
    ("action", "I"),
    ("event_channel_port", "I"),
)

IOCTL_GNTALLOC_ALLOC_GREF = _ioc_none("G", 5, GNTALLOC_ALLOC_GREF.struct.size)
IOCTL_GNTALLOC_DEALLOC_GREF = _ioc_none("G", 6, GNTALLOC_DEALLOC_GREF.struct.size)
IOCTL_GNTALLOC_SET_UNMAP_NOTIFY = _ioc_none("G", 7, GNTALLOC_UNMAP_NOTIFY.struct.size)

GNTALLOC_FLAG_WRITABLE = 1

# -- evtchn.h ---------------------------------------------------------------------------

EVTCHN_BIND_VIRQ = Layout("struct ioctl_evtchn_bind_virq", ("virq", "I"))
EVTCHN_BIND_INTERDOMAIN = Layout(
    "struct ioctl_evtchn_bind_interdomain", ("remote_domain", "I"), ("remote_port", "I")
)
EVTCHN_BIND_UNBOUND_PORT = Layout("struct ioctl_evtchn_bind_unbound_port", ("remote_domain", "I"))
EVTCHN_UNBIND = Layout("struct ioctl_evtchn_unbind", ("port", "I"))
EVTCHN_NOTIFY = Layout("struct ioctl_evtchn_notify", ("port", "I"))
EVTCHN_RESTRICT_DOMID = Layout("struct ioctl_evtchn_restrict_domid", ("domid", "H"))

IOCTL_EVTCHN_BIND_VIRQ = _ioc_none("E", 0, EVTCHN_BIND_VIRQ.struct.size)
IOCTL_EVTCHN_BIND_INTERDOMAIN = _ioc_none("E", 1, EVTCHN_BIND_INTERDOMAIN.struct.size)
IOCTL_EVTCHN_BIND_UNBOUND_PORT = _ioc_none("E", 2, EVTCHN_BIND_UNBOUND_PORT.struct.size)
IOCTL_EVTCHN_UNBIND = _ioc_none("E", 3, EVTCHN_UNBIND.struct.size)
IOCTL_EVTCHN_NOTIFY = _ioc_none("E", 4, EVTCHN_NOTIFY.struct.size)
IOCTL_EVTCHN_RESET = _ioc_none("E", 5, 0)
IOCTL_EVTCHN_RESTRICT_DOMID = _ioc_none("E", 6, EVTCHN_RESTRICT_DOMID.struct.size)

EVTCHN_PORT_SIZE = 4
"""sizeof(evtchn_port_t): read() and write() on the device move whole ports of this size."""

# -- xenbus_dev.h -----------------------------------------------------------------------

IOCTL_XENBUS_BACKEND_EVTCHN = _ioc_none("B", 0, 0)
IOCTL_XENBUS_BACKEND_SETUP = _ioc_none("B", 1, 0)

LAYOUTS = (
    GNTDEV_GRANT_REF,
    GNTDEV_MAP_GRANT_REF,
    GNTDEV_UNMAP_GRANT_REF,
    GNTDEV_GET_OFFSET_FOR_VADDR,
    GNTDEV_SET_MAX_GRANTS,
    GNTDEV_UNMAP_NOTIFY,
    GNTDEV_GRANT_COPY_SEGMENT,
    GNTDEV_GRANT_COPY,
    GNTDEV_DMABUF_EXP_FROM_REFS,
    GNTDEV_DMABUF_EXP_WAIT_RELEASED,
    GNTDEV_DMABUF_IMP_TO_REFS,
    GNTDEV_DMABUF_IMP_RELEASE,
    GNTALLOC_ALLOC_GREF,
    GNTALLOC_DEALLOC_GREF,
    GNTALLOC_UNMAP_NOTIFY,
    EVTCHN_BIND_VIRQ,
    EVTCHN_BIND_INTERDOMAIN,
    EVTCHN_BIND_UNBOUND_PORT,
    EVTCHN_UNBIND,
    EVTCHN_NOTIFY,
    EVTCHN_RESTRICT_DOMID,
)

# -- variable-length requests -----------------------------------------------------------

_U32 = struct.Struct("<I")
_MAP_HEADER = GNTDEV_MAP_GRANT_REF.fields["refs[0].domid"].offset
_ALLOC_HEADER = GNTALLOC_ALLOC_GREF.fields["gref_ids[0]"].offset


def _with_room(request: bytes, size: int) -> bytearray:
    """The request padded to at least the C struct's size: the kernel copies that much."""
    return bytearray(request.ljust(size, b"\0"))


def map_grant_ref_request(domid: int, refs: Sequence[int]) -> bytearray:
    """IOCTL_GNTDEV_MAP_GRANT_REF's argument: count, then one (domid, ref) per page."""
    if not refs:
        raise ValueError("no grant refs to map")
    header = GNTDEV_MAP_GRANT_REF.struct.pack(len(refs), 0, 0, domid, refs[0])[:_MAP_HEADER]
    pairs = b"".join(GNTDEV_GRANT_REF.pack(domid, ref) for ref in refs)
    return bytearray(header + pairs)


def map_grant_ref_index(reply: bytes | bytearray) -> int:
    """The mmap offset the kernel wrote into a MAP_GRANT_REF argument."""
    return int(GNTDEV_MAP_GRANT_REF.unpack(reply)[2])


def unmap_grant_ref_request(index: int, count: int) -> bytearray:
    return bytearray(GNTDEV_UNMAP_GRANT_REF.pack(index, count, 0))


def alloc_gref_request(domid: int, count: int, writable: bool) -> bytearray:
    """IOCTL_GNTALLOC_ALLOC_GREF's argument, with room for the `count` refs it returns."""
    if count < 1:
        raise ValueError("no pages to allocate")
    flags = GNTALLOC_FLAG_WRITABLE if writable else 0
    header = GNTALLOC_ALLOC_GREF.pack(domid, flags, count, 0, 0)[:_ALLOC_HEADER]
    return _with_room(header + bytes(_U32.size * count), GNTALLOC_ALLOC_GREF.struct.size)


def alloc_gref_reply(reply: bytes | bytearray) -> tuple[int, list[int]]:
    """The mmap offset and the grant refs the kernel wrote into an ALLOC_GREF argument."""
    _, _, count, index, _ = GNTALLOC_ALLOC_GREF.unpack(reply)
    refs = struct.unpack_from(f"<{count}I", reply, _ALLOC_HEADER)
    return int(index), list(refs)


def dealloc_gref_request(index: int, count: int) -> bytearray:
    return bytearray(GNTALLOC_DEALLOC_GREF.pack(index, count))


def bind_interdomain_request(remote_domain: int, remote_port: int) -> bytearray:
    return bytearray(EVTCHN_BIND_INTERDOMAIN.pack(remote_domain, remote_port))


def bind_unbound_port_request(remote_domain: int) -> bytearray:
    return bytearray(EVTCHN_BIND_UNBOUND_PORT.pack(remote_domain))


def port_request(port: int) -> bytearray:
    """The argument of IOCTL_EVTCHN_UNBIND and IOCTL_EVTCHN_NOTIFY (one port each)."""
    return bytearray(EVTCHN_NOTIFY.pack(port))


def decode_ports(data: bytes) -> list[int]:
    """The ports an evtchn read() returned, in order, duplicates kept.

    The device only ever returns whole ports; a torn tail would mean a kernel bug and
    is refused rather than guessed at.
    """
    if len(data) % EVTCHN_PORT_SIZE:
        raise ValueError(f"evtchn read of {len(data)} bytes is not whole ports")
    return list(struct.unpack(f"<{len(data) // EVTCHN_PORT_SIZE}I", data))


def encode_ports(ports: Sequence[int]) -> bytes:
    """Ports to write back to the evtchn device, which unmasks each one written."""
    return struct.pack(f"<{len(ports)}I", *ports)
