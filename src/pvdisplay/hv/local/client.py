"""A domain's side of the emulated hypervisor: `pvdisplay.hv.Hypervisor` over the broker.

Requests go to the broker over the domain's own unix socket and block for the reply.
The broker also pushes unsolicited events on that socket (a port got its peer, or lost
it); they are handled whenever the socket is read. Event-channel notification never
touches the broker: `notify()` writes the peer's eventfd directly.
"""

import errno
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pvdisplay.hv import (
    DOMID_FIRST_RESERVED,
    BufferHandle,
    ChannelStatus,
    GuestMemory,
    HypervisorError,
    ImportedBuffer,
    PortState,
)
from pvdisplay.ipc import framing
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.framing import Assembler, FramedMessage, JsonObject
from pvdisplay.ipc.memory import Segment, SharedMapping
from pvdisplay.ipc.sockets import DescriptorsLostError, close_all, recv_record, send_message

_ONE = (1).to_bytes(8, "little")


class LocalHypervisor:
    """Implements `pvdisplay.hv.Hypervisor` for a domain process of the local host."""

    def __init__(self, sock: socket.socket, domid: int) -> None:
        self._sock = sock
        self._domid = domid
        # Reentrant: `LocalEvents` holds it across a broker call and the bookkeeping of
        # its answer, so that a thread reading broker events meanwhile finds both done.
        self._lock = threading.RLock()
        self._assembler = Assembler()
        self._orphans: deque[JsonObject] = deque()
        self.received_bytes = 0
        """Bytes read from the broker socket so far: evidence that pages never travel."""
        self._events = LocalEvents(self)
        self._grants = LocalGrants(self)
        self._buffers = LocalBuffers(self)

    @property
    def domid(self) -> int:
        return self._domid

    @property
    def grants(self) -> "LocalGrants":
        return self._grants

    @property
    def events(self) -> "LocalEvents":
        return self._events

    @property
    def buffers(self) -> "LocalBuffers":
        return self._buffers

    def fileno(self) -> int:
        return self._sock.fileno()

    def call(self, body: JsonObject, fds: Sequence[int] = ()) -> FramedMessage:
        """One request and its reply; error replies raise HypervisorError."""
        with self._lock:
            while self._orphans:
                try:
                    self._exchange(self._orphans.popleft(), ())
                except HypervisorError as exc:
                    if exc.errno == errno.ESHUTDOWN:
                        raise
            return self._exchange(body, fds)

    def _abandon(self, record: bytes) -> None:
        """Undo what a reply we could not take stood for: a mapping, memory, a port."""
        body = framing.whole_body(record)
        if body is None or "event" in body or "error" in body:
            return
        for field, op in (("map", "unmap"), ("alloc", "free"), ("port", "evtchn_unbind")):
            value = body.get(field)
            if type(value) is int:
                self.release_later({"op": op, field: value})
                return

    def release_later(self, body: JsonObject) -> None:
        """Queue a release for an object garbage-collected unclosed; sent with the next call."""
        self._orphans.append(body)

    def drain_events(self) -> None:
        """Handle every event already waiting on the socket, without blocking."""
        with self._lock:
            self._drain_events()

    def _drain_events(self) -> None:
        while True:
            try:
                message = self._receive(socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if message is not None:
                self._events.on_event(message)

    def close(self) -> None:
        """Leave the hypervisor: the broker treats this domain as gone."""
        self._buffers.close()  # before the events, whose epoll watches its leases
        self._events.close()
        self._sock.close()

    def _exchange(self, body: JsonObject, fds: Sequence[int]) -> FramedMessage:
        try:
            send_message(self._sock, body, fds)
        except OSError as exc:
            raise HypervisorError(errno.ESHUTDOWN, f"broker unreachable: {exc}") from None
        while True:
            message = self._receive(0)
            if message is None:
                continue
            if "event" in message.body:
                self._events.on_event(message)
                continue
            error = message.body.get("error")
            if error is not None:
                close_all(message.fds)
                code = error if type(error) is int and error > 0 else errno.EIO
                raise HypervisorError(code, str(message.body.get("message", "")))
            return message

    def _receive(self, flags: int) -> FramedMessage | None:
        try:
            record, fds = recv_record(self._sock, flags)
        except (EOFError, ConnectionError):
            raise HypervisorError(errno.ESHUTDOWN, "the hypervisor broker is gone") from None
        except DescriptorsLostError as exc:
            # Our own table is full and the reply's descriptors are lost: this call fails,
            # and what the broker made for it is given back with the next call.
            self._abandon(exc.record)
            raise HypervisorError(errno.EMFILE, "no room for the reply's descriptors") from None
        self.received_bytes += len(record)
        return self._assembler.feed(record, fds)


@dataclass
class _Port:
    rx: int
    tx: int | None
    status: ChannelStatus


class LocalEvents:
    """Implements `pvdisplay.hv.EventChannels`.

    Each local port has its own eventfd, which the peer writes. One epoll instance
    watches them all plus the broker socket (for peer changes), so `fileno()` is a
    single pollable descriptor however many ports there are. One thread waits at a time;
    any thread may notify, bind and unbind. Binding, unbinding and broker events change
    a port's descriptors and status only under the hypervisor's lock, which `notify`
    holds while it writes and `pending` while it takes the ports broker events marked.
    """

    def __init__(self, hv: LocalHypervisor) -> None:
        self._hv = hv
        self._epoll = select.epoll()
        self._epoll.register(hv.fileno(), select.EPOLLIN)
        self._ports: dict[int, _Port] = {}
        self._by_fd: dict[int, int] = {}
        self._changed: list[int] = []
        # Descriptors whose hangup `pending()` acts on as it passes (export leases).
        self._hangups: dict[int, Callable[[], None]] = {}

    def bind_unbound_port(self, remote_domid: int) -> int:
        with self._hv._lock:
            reply = self._hv.call({"op": "evtchn_unbound", "domid": remote_domid})
            port = framing.get_int(reply.body, "port")
            status = ChannelStatus(PortState.UNBOUND, remote_domid, None)
            self._add(port, reply.fds[0], None, status)
        return port

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        with self._hv._lock:
            reply = self._hv.call({"op": "evtchn_bind", "domid": remote_domid, "port": remote_port})
            port = framing.get_int(reply.body, "port")
            status = ChannelStatus(PortState.INTERDOMAIN, remote_domid, remote_port)
            self._add(port, reply.fds[0], reply.fds[1], status)
        return port

    def notify(self, port: int) -> None:
        local = self._ports.get(port)
        if local is None:
            raise HypervisorError(errno.ENOTCONN, f"port {port} is not bound here")
        # Locked: a broker event read by another thread may close `tx` meanwhile, and its
        # number could then belong to a descriptor opened since.
        with self._hv._lock:
            if local.tx is None:
                self._hv._drain_events()
                if local.tx is None:
                    return
            # Edge-triggered, the count is never read back: it saturates only after
            # 2**64 - 2 notifies, and the port is pending then anyway. (No
            # contextlib.suppress: its Python-level calls cost a woken backend dearly.)
            try:
                os.write(local.tx, _ONE)
            except BlockingIOError:
                return

    def unbind(self, port: int) -> None:
        with self._hv._lock:
            if port not in self._ports:
                raise HypervisorError(errno.ENOTCONN, f"port {port} is not bound here")
            self._hv.call({"op": "evtchn_unbind", "port": port})
            self._drop(port)

    def pending(self, timeout: float | None = None) -> list[int]:
        # No clock read for timeout 0: an asyncio reader's call on every wake-up.
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            if self._changed or timeout == 0:
                wait = 0.0
            elif deadline is None:
                wait = -1.0
            else:
                wait = max(0.0, deadline - time.monotonic())
            fired = self._collect(self._epoll.poll(wait))
            if fired or wait == 0:
                return fired

    def _collect(self, ready: list[tuple[int, int]]) -> list[int]:
        """The ports that fired; broker messages on the socket may mark others."""
        fired = []
        for fd, _ in ready:
            port = self._by_fd.get(fd)
            if port is not None:
                fired.append(port)
            elif fd == self._hv.fileno():
                self._hv.drain_events()
            else:
                with self._hv._lock:  # the callback may have been dropped meanwhile
                    callback = self._hangups.get(fd)
                    if callback is not None:
                        callback()
        if self._changed:
            with self._hv._lock:  # broker events append to it on any thread
                changed, self._changed = self._changed, []
            fired += [port for port in changed if port not in fired]
        return fired

    def status(self, port: int) -> ChannelStatus:
        local = self._ports.get(port)
        if local is None:
            raise HypervisorError(errno.ENOTCONN, f"port {port} is not bound here")
        return local.status

    def fileno(self) -> int:
        return self._epoll.fileno()

    def on_event(self, message: FramedMessage) -> None:
        body = message.body
        port = body.get("port")
        local = self._ports.get(port) if isinstance(port, int) else None
        if local is None:
            close_all(message.fds)
            return
        if body.get("event") == "bound" and len(message.fds) == 1:
            if local.tx is not None:
                os.close(local.tx)
            local.tx = message.fds[0]
            local.status = ChannelStatus(
                PortState.INTERDOMAIN,
                framing.get_int(body, "remote_domid", DOMID_FIRST_RESERVED),
                framing.get_int(body, "remote_port"),
            )
        elif body.get("event") == "unbound":
            close_all(message.fds)
            if local.tx is not None:
                os.close(local.tx)
                local.tx = None
            local.status = ChannelStatus(PortState.UNBOUND, local.status.remote_domid, None)
            self._changed.append(framing.get_int(body, "port"))
        else:
            close_all(message.fds)

    def close(self) -> None:
        with self._hv._lock:
            for port in list(self._ports):
                self._drop(port)
        self._epoll.close()

    def on_hangup(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` (under the lock) when `fd` hangs up, from the next `pending()`;
        it must call `forget_hangup(fd)`."""
        with self._hv._lock:
            self._hangups[fd] = callback
            self._epoll.register(fd, select.EPOLLIN)

    def forget_hangup(self, fd: int) -> None:
        with self._hv._lock:
            if self._hangups.pop(fd, None) is not None:
                self._epoll.unregister(fd)

    def _add(self, port: int, rx: int, tx: int | None, status: ChannelStatus) -> None:
        self._ports[port] = _Port(rx, tx, status)
        self._by_fd[rx] = port
        # Edge-triggered: every notify is one edge that epoll reports once, so a port is
        # cleared by reporting it, with no read() of its eventfd (whose count nobody
        # needs: a Xen port is pending or not).
        self._epoll.register(rx, select.EPOLLIN | select.EPOLLET)

    def _drop(self, port: int) -> None:
        """Forget `port` and close its descriptors; the caller holds the lock."""
        local = self._ports.pop(port)
        self._epoll.unregister(local.rx)
        del self._by_fd[local.rx]
        os.close(local.rx)
        if local.tx is not None:
            os.close(local.tx)
            local.tx = None  # a notify that found the port just before sends nothing
        if port in self._changed:
            self._changed.remove(port)


class _Release:
    """Tell the broker a mapping or allocation is gone: now on close(), later if collected."""

    def __init__(self, hv: LocalHypervisor, body: JsonObject) -> None:
        self._hv = hv
        self._body = body
        self._finalizer: weakref.finalize[..., object] | None = None

    def watch(self, owner: SharedMapping) -> None:
        self._finalizer = weakref.finalize(owner, self._hv.release_later, self._body)

    def __call__(self) -> None:
        if self._finalizer is not None and self._finalizer.detach() is None:
            return
        try:
            self._hv.call(self._body)
        except HypervisorError as exc:
            if exc.errno != errno.ESHUTDOWN:
                raise


class LocalGuestMemory(SharedMapping):
    """Implements `pvdisplay.hv.GuestMemory`: one allocation, mapped writable here."""

    def __init__(self, hv: LocalHypervisor, alloc_id: int, fd: int, pages: int) -> None:
        release = _Release(hv, {"op": "free", "alloc": alloc_id})
        super().__init__([fd], [Segment(0, 0, pages)], writable=True, on_close=release)
        release.watch(self)
        self.alloc_id = alloc_id
        self.owner = hv


class LocalGrants:
    """Implements `pvdisplay.hv.GrantTable`."""

    def __init__(self, hv: LocalHypervisor) -> None:
        self._hv = hv

    def alloc(self, pages: int) -> LocalGuestMemory:
        reply = self._hv.call({"op": "alloc", "pages": pages})
        return self._memory(reply, pages)

    def grant(
        self, domid: int, memory: GuestMemory, pages: Sequence[int], readonly: bool = False
    ) -> list[int]:
        if not isinstance(memory, LocalGuestMemory) or memory.owner is not self._hv:
            raise HypervisorError(errno.EINVAL, "memory was not allocated by this domain")
        reply = self._hv.call(
            {
                "op": "grant",
                "domid": domid,
                "alloc": memory.alloc_id,
                "pages": framing.pack_u32s(pages),
                "readonly": readonly,
            }
        )
        return framing.get_u32s(reply.body, "refs", len(pages))

    def share(
        self, domid: int, pages: int, readonly: bool = False
    ) -> tuple[LocalGuestMemory, list[int]]:
        reply = self._hv.call({"op": "share", "domid": domid, "pages": pages, "readonly": readonly})
        refs = framing.get_u32s(reply.body, "refs", pages)
        return self._memory(reply, pages), refs

    def end_access(self, refs: Sequence[int]) -> list[int]:
        reply = self._hv.call({"op": "end", "refs": framing.pack_u32s(refs)})
        return framing.get_u32s(reply.body, "deferred", len(refs))

    def map(self, domid: int, refs: Sequence[int], writable: bool = True) -> SharedMapping:
        reply = self._hv.call(
            {"op": "map", "domid": domid, "refs": framing.pack_u32s(refs), "writable": writable}
        )
        release = _Release(self._hv, {"op": "unmap", "map": framing.get_int(reply.body, "map")})
        try:
            mapping = SharedMapping(reply.fds, _segments(reply.body), writable, on_close=release)
        except BaseException:
            release()
            raise
        finally:
            close_all(reply.fds)
        release.watch(mapping)
        return mapping

    def _memory(self, reply: FramedMessage, pages: int) -> LocalGuestMemory:
        try:
            return LocalGuestMemory(
                self._hv, framing.get_int(reply.body, "alloc"), reply.fds[0], pages
            )
        finally:
            close_all(reply.fds)


class LocalBuffers:
    """Implements `pvdisplay.hv.Buffers`."""

    def __init__(self, hv: LocalHypervisor) -> None:
        self._hv = hv
        self._leases: dict[str, int] = {}

    def export_from_refs(
        self, domid: int, refs: Sequence[int], writable: bool = True
    ) -> SharedBuffer:
        reply = self._hv.call(
            {"op": "export", "domid": domid, "refs": framing.pack_u32s(refs), "writable": writable}
        )
        *objects, lease, watch = reply.fds
        handle_id = framing.get_str(reply.body, "id")
        with self._hv._lock:
            self._leases[handle_id] = watch
            # Closed as soon as the export is released, by whichever thread waits for
            # events next: a guest's buffers must not stay counted until a later export.
            self._hv.events.on_hangup(watch, lambda: self._forget(handle_id))
        return SharedBuffer(handle_id, objects, _segments(reply.body), not writable, lease)

    def wait_released(self, handle_id: str, timeout: float) -> None:
        with self._hv._lock:
            watch = self._leases.get(handle_id)
            if watch is None:
                return
            # A copy to wait on: the event thread may close the original meanwhile.
            waiting = os.dup(watch)
        try:
            poller = select.poll()
            poller.register(waiting, select.POLLIN)
            if not poller.poll(max(0, int(timeout * 1000))):
                raise HypervisorError(errno.ETIMEDOUT, f"buffer {handle_id} is still held")
        finally:
            os.close(waiting)
        self._forget(handle_id)

    def import_to_refs(
        self, handle: BufferHandle, domid: int, readonly: bool = False
    ) -> ImportedBuffer:
        if not isinstance(handle, SharedBuffer):
            raise HypervisorError(errno.EINVAL, "not a local buffer handle")
        segments = [[s.object_index, s.first_page, s.pages] for s in handle.segments]
        reply = self._hv.call(
            {"op": "import", "domid": domid, "readonly": readonly, "segments": segments},
            handle.fds,
        )
        refs = framing.get_u32s(reply.body, "refs", handle.pages)
        return ImportedBuffer(framing.get_str(reply.body, "id"), domid, refs)

    def release(self, import_id: str) -> list[int]:
        reply = self._hv.call({"op": "release", "id": import_id})
        return framing.get_u32s(reply.body, "deferred", framing.MAX_FDS)

    def close(self) -> None:
        for handle_id in list(self._leases):
            self._forget(handle_id)

    def _forget(self, handle_id: str) -> None:
        """Drop the watch of a released (or abandoned) export."""
        with self._hv._lock:
            watch = self._leases.pop(handle_id, None)
            if watch is not None:
                self._hv.events.forget_hangup(watch)
                os.close(watch)


def _segments(body: JsonObject) -> list[Segment]:
    return [Segment(*t) for t in framing.get_triples(body, "segments", framing.MAX_FDS)]
