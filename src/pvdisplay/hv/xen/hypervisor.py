"""`pvdisplay.hv.Hypervisor` on real Xen: the domain's id and its three device-backed services."""

import errno
import os

from pvdisplay.hv import DOMID_FIRST_RESERVED, HypervisorError
from pvdisplay.hv.xen.buffers import XenBuffers
from pvdisplay.hv.xen.device import open_device
from pvdisplay.hv.xen.events import XenEventChannels
from pvdisplay.hv.xen.grants import XenGrantTable
from pvdisplay.store.client import Client
from pvdisplay.store.transport import xenstore_path

CAPABILITIES = "/proc/xen/capabilities"
"""Lists `control_d` in the control domain (xenfs mounted on /proc/xen)."""


class XenHypervisor:
    """Implements `pvdisplay.hv.Hypervisor` over /dev/xen/{evtchn,gntdev,gntalloc}."""

    def __init__(self, domid: int, events: XenEventChannels, grants: XenGrantTable) -> None:
        self._domid = domid
        self._events = events
        self._grants = grants
        self._buffers = XenBuffers(domid, grants)

    @property
    def domid(self) -> int:
        return self._domid

    @property
    def grants(self) -> XenGrantTable:
        return self._grants

    @property
    def events(self) -> XenEventChannels:
        return self._events

    @property
    def buffers(self) -> XenBuffers:
        return self._buffers

    def close(self) -> None:
        """Close the devices: the kernel unbinds our ports and unmaps what is unmapped here.

        Guest memory and mappings still open keep their pages until they are closed.
        """
        self._buffers.close()
        self._events.close()
        self._grants.close()


def is_control_domain(capabilities: str = CAPABILITIES) -> bool:
    """Whether this is a Xen control domain (dom0), as xencommons decides it."""
    try:
        with open(capabilities, encoding="ascii") as lines:
            return "control_d" in lines.read().split()
    except (OSError, UnicodeDecodeError):
        return False


def own_domid(store_path: str | None = None, capabilities: str = CAPABILITIES) -> int:
    """This domain's id: 0 in the control domain, else the `domid` node XenStore keeps.

    A relative path in XenStore is relative to the caller's /local/domain/<id>, and the
    toolstack writes `domid` there for every domain it builds.
    """
    if is_control_domain(capabilities):
        return 0
    with Client(store_path or xenstore_path()) as store:
        text = store.read("domid").decode("ascii", "replace")
    if not text.isdigit() or int(text) >= DOMID_FIRST_RESERVED:
        raise HypervisorError(errno.EPROTO, f"XenStore says our domid is {text!r}")
    return int(text)


def open_hypervisor(domid: int | None = None) -> XenHypervisor:
    """Open the Xen devices as domain `domid` (found out with `own_domid()` when None)."""
    if domid is None:
        domid = own_domid()
    if not 0 <= domid < DOMID_FIRST_RESERVED:
        raise HypervisorError(errno.EINVAL, f"domain {domid} is reserved")
    # gntalloc is opened once per allocation; opening it now fails early and clearly.
    os.close(open_device("gntalloc"))
    events = XenEventChannels.open()
    try:
        gntdev = open_device("gntdev")
    except BaseException:
        events.close()
        raise
    try:
        return XenHypervisor(domid, events, XenGrantTable(domid, gntdev))
    except BaseException:
        events.close()
        os.close(gntdev)
        raise
