"""`pvdisplay.hv.EventChannels` over /dev/xen/evtchn.

The device hands out local ports from its binding ioctls. When a port fires, the
kernel masks it and queues its number; `read()` returns queued ports as native
`evtchn_port_t`s, and writing a port number back unmasks it (that is how the device
defines re-enabling). `pending()` therefore reads everything queued, writes the
distinct ports straight back and then reports them: an event that arrives after the
write-back is queued again and reported by the next call, so none is lost, and the
caller handles a port knowing a later notification will wake it again.

What the device cannot say is whether the peer is still there: Xen turns our end
back to unbound when the peer closes its end, without an event. `status()` is
therefore what this process knows: a port made by `bind_unbound_port` is UNBOUND
until it first fires (only a bound peer can notify it), then INTERDOMAIN with the
remote port unknown (None); a port made by `bind_interdomain` is INTERDOMAIN with the
remote port it was bound to. A peer's departure shows in XenStore (its state node),
which is what the display and input code watch anyway.
"""

import errno
import os
import select
import threading
import time
from dataclasses import dataclass

from pvdisplay.hv import ChannelStatus, HypervisorError, PortState
from pvdisplay.hv.xen import abi
from pvdisplay.hv.xen.device import Ioctl, ioctl, open_device

_READ_BYTES = 4096
"""The kernel's queue is one page of ports; one read of this size drains it."""
_PORTS_PER_WRITE = _READ_BYTES // abi.EVTCHN_PORT_SIZE
"""The kernel unmasks at most a page of ports per write()."""


@dataclass
class _Port:
    status: ChannelStatus
    awaiting_peer: bool


class XenEventChannels:
    """Implements `pvdisplay.hv.EventChannels` on an evtchn device descriptor.

    One thread waits in `pending()` at a time; any thread may bind, unbind, notify
    and ask `status()`.
    """

    def __init__(self, fd: int, call: Ioctl = ioctl) -> None:
        """Take ownership of `fd`, an open non-blocking evtchn device (or a stand-in)."""
        self._fd = fd
        self._call = call
        self._lock = threading.Lock()
        self._ports: dict[int, _Port] = {}
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    @classmethod
    def open(cls) -> "XenEventChannels":
        return cls(open_device("evtchn", os.O_NONBLOCK))

    def bind_unbound_port(self, remote_domid: int) -> int:
        request = abi.bind_unbound_port_request(remote_domid)
        with self._lock:
            port = self._call(self._fd, abi.IOCTL_EVTCHN_BIND_UNBOUND_PORT, request)
            status = ChannelStatus(PortState.UNBOUND, remote_domid, None)
            self._ports[port] = _Port(status, awaiting_peer=True)
        return port

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        request = abi.bind_interdomain_request(remote_domid, remote_port)
        with self._lock:
            port = self._call(self._fd, abi.IOCTL_EVTCHN_BIND_INTERDOMAIN, request)
            status = ChannelStatus(PortState.INTERDOMAIN, remote_domid, remote_port)
            self._ports[port] = _Port(status, awaiting_peer=False)
        return port

    def notify(self, port: int) -> None:
        # The kernel checks the port belongs to this descriptor (ENOTCONN otherwise),
        # so no lock or lookup on the path every flip takes.
        self._call(self._fd, abi.IOCTL_EVTCHN_NOTIFY, abi.port_request(port))

    def unbind(self, port: int) -> None:
        with self._lock:
            if port not in self._ports:
                raise HypervisorError(errno.ENOTCONN, f"port {port} is not bound here")
            self._call(self._fd, abi.IOCTL_EVTCHN_UNBIND, abi.port_request(port))
            del self._ports[port]

    def pending(self, timeout: float | None = None) -> list[int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            wait = -1 if left is None else max(0, round(left * 1000))
            if self._poller.poll(wait):
                fired = self._drain()
                if fired:
                    return fired
            if wait == 0:
                return []

    def status(self, port: int) -> ChannelStatus:
        local = self._ports.get(port)
        if local is None:
            raise HypervisorError(errno.ENOTCONN, f"port {port} is not bound here")
        return local.status

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Close the device; the kernel unbinds every port still bound through it."""
        with self._lock:
            self._ports.clear()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _drain(self) -> list[int]:
        """Read every queued port, unmask each, and update what the ports' firing says."""
        queued = bytearray()
        while True:
            try:
                chunk = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EFBIG:
                    raise HypervisorError(exc.errno or errno.EIO, "evtchn read failed") from None
                return self._recover_overflow()
            if not chunk:
                break
            queued += chunk
        with self._lock:
            # Ports unbound since they fired are dropped: a port number may already
            # belong to a binding made since, and the kernel ignores an unknown port.
            fired = [p for p in dict.fromkeys(abi.decode_ports(bytes(queued))) if p in self._ports]
            self._unmask(fired)
            for port in fired:
                self._heard_from(port)
        return fired

    def _recover_overflow(self) -> list[int]:
        """The queue overflowed (EFBIG) and ports were lost: reset it, unmask and report
        every bound port, since any of them may have fired; a spurious report is harmless,
        a lost one would stall a ring."""
        with self._lock:
            self._call(self._fd, abi.IOCTL_EVTCHN_RESET, 0)
            fired = list(self._ports)
            self._unmask(fired)
            for port in fired:
                self._heard_from(port)
        return fired

    def _unmask(self, ports: list[int]) -> None:
        try:
            for start in range(0, len(ports), _PORTS_PER_WRITE):
                os.write(self._fd, abi.encode_ports(ports[start : start + _PORTS_PER_WRITE]))
        except OSError as exc:
            raise HypervisorError(exc.errno or errno.EIO, "evtchn unmask failed") from None

    def _heard_from(self, port: int) -> None:
        local = self._ports.get(port)
        if local is not None and local.awaiting_peer:
            local.awaiting_peer = False
            local.status = ChannelStatus(PortState.INTERDOMAIN, local.status.remote_domid, None)
