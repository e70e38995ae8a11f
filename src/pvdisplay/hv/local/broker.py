"""The broker: one process that serves every domain's socket with the hypervisor tables.

It owns the memory objects (memfds) and the event-channel eventfds, and hands domains
exactly the descriptors the tables allow. A domain is known by the socket its request
arrived on, never by anything the request says. A domain dies when its process exits
(its pidfd turns readable), when it closes its socket, or when it breaks the framing
(then the broker also kills it). Its state is torn down in the tables, and the host is
told on the control socket so it can fire @releaseDomain.

Run as `python -m pvdisplay.hv.local.broker CONTROL_FD LIMITS_JSON`; the host does that.
"""

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import selectors
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict

from pvdisplay import logs
from pvdisplay.hv import DOMID_FIRST_RESERVED, HypervisorError
from pvdisplay.hv.local.tables import (
    AllocationFreed,
    HypervisorTables,
    Limits,
    NewObject,
    PortBound,
    PortClosed,
    PortUnbound,
)
from pvdisplay.ipc import framing
from pvdisplay.ipc.framing import Assembler, FramedMessage, JsonObject, encode
from pvdisplay.ipc.memory import Segment, create_memfd, sealed_pages
from pvdisplay.ipc.sockets import close_all, raise_descriptor_limit, recv_record, rights
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger("pvdisplay.hv.local.broker")

MAX_QUEUED_RECORDS = 4096
"""A domain that lets this many records pile up unread is killed rather than buffered."""

MAX_FDS_PER_REQUEST = framing.FDS_PER_RECORD
"""Descriptors one request may carry (an import passes one per memory object): one
record's worth. The broker holds them until the message is whole, outside any budget, so
a domain announcing more breaks the framing."""

FD_RESERVE_SHARE = 2
"""The tables may hand 1/FD_RESERVE_SHARE of RLIMIT_NOFILE to domains' objects and ports;
the rest is kept for domain sockets, pidfds, requests in flight and replies queued."""

_MAX_DOMID = DOMID_FIRST_RESERVED - 1

_Reply = tuple[JsonObject, list[int], list[int]]
_Handler = Callable[[int, JsonObject, list[int]], _Reply]


class _Link:
    """A non-blocking SEQPACKET peer with an outbound queue.

    Queued records hold duplicates of their descriptors, closed once sent: a message
    waiting for a slow reader must not send a number the broker has since closed
    and reused for something else.
    """

    def __init__(self, sock: socket.socket, max_fds: int = framing.MAX_FDS) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.assembler = Assembler(max_fds=max_fds)
        self.outbound: deque[tuple[bytes, list[int]]] = deque()

    def queue(self, body: JsonObject, fds: Sequence[int] = ()) -> None:
        for record, record_fds in encode(body, fds):
            self.outbound.append((record, [os.dup(fd) for fd in record_fds]))

    def flush(self) -> bool:
        """Send what the socket takes; True when nothing is left queued."""
        while self.outbound:
            record, fds = self.outbound[0]
            try:
                self.sock.sendmsg([record], rights(fds))
            except BlockingIOError:
                return False
            self.outbound.popleft()
            close_all(fds)
        return True

    def read(self) -> FramedMessage | None:
        """The next whole message, or None if none is complete yet.

        EOFError / ProtocolError end the link; OSError(EMFILE) means a record arrived
        whose descriptors this process had no room for (the record is consumed).
        """
        while True:
            try:
                record, fds = recv_record(self.sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            message = self.assembler.feed(record, fds)
            if message is not None:
                return message

    def close(self) -> None:
        self.sock.close()
        close_all(self.assembler.fds)
        self.assembler.fds.clear()
        for _, fds in self.outbound:
            close_all(fds)
        self.outbound.clear()


class Broker:
    def __init__(
        self, control: socket.socket, limits: Limits, descriptor_capacity: int | None = None
    ) -> None:
        self._tables = HypervisorTables(limits, descriptor_capacity)
        self._selector = selectors.DefaultSelector()
        self._control = _Link(control)
        self._selector.register(control, selectors.EVENT_READ, self._on_control)
        self._links: dict[int, _Link] = {}
        self._pidfds: dict[int, int] = {}
        self._objects: dict[int, int] = {}
        self._readonly: dict[int, int] = {}
        self._inodes: dict[tuple[int, int], int] = {}
        self._inode_of: dict[int, tuple[int, int]] = {}
        self._eventfds: dict[tuple[int, int], int] = {}
        self._running = True
        self._handlers: dict[str, _Handler] = {
            "alloc": self._alloc,
            "share": self._share,
            "free": self._free,
            "grant": self._grant,
            "end": self._end,
            "map": self._map,
            "unmap": self._unmap,
            "export": self._export,
            "import": self._import,
            "release": self._release,
            "evtchn_unbound": self._evtchn_unbound,
            "evtchn_bind": self._evtchn_bind,
            "evtchn_unbind": self._evtchn_unbind,
        }

    def run(self) -> None:
        while self._running:
            for key, mask in self._selector.select():
                try:
                    key.data(mask)
                except Exception:
                    # Whatever one event met (a bug, a descriptor table full while telling
                    # a peer its port is bound) costs that event, not every domain its
                    # hypervisor.
                    log.exception("event failed")
        for domid in list(self._links):
            self._destroy(domid, kill=True)
        self._control.close()

    # -- control socket (the host) -------------------------------------------------

    def _on_control(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(self._control, self._control.sock)
        if not mask & selectors.EVENT_READ:
            return
        while True:
            try:
                message = self._control.read()
            except (EOFError, ConnectionError, ProtocolError):
                self._running = False
                return
            except OSError as exc:
                # Out of descriptors: the host's request lost its own; answer it and go on.
                self._control.queue({"error": exc.errno, "message": str(exc)})
                continue
            if message is None:
                break
            self._control_request(message)
        self._flush(self._control, self._control.sock)

    def _control_request(self, message: FramedMessage) -> None:
        body, fds = message.body, message.fds
        try:
            op = body.get("op")
            if op == "add_domain" and len(fds) == 2:
                domid = framing.get_int(body, "domid", _MAX_DOMID)
                self._tables.add_domain(domid)
                sock_fd, pidfd = fds
                fds = []
                self._add_domain(domid, sock_fd, pidfd)
                self._control.queue({"ok": True})
            elif op == "stats":
                fd_count = len(os.listdir("/proc/self/fd")) - 1
                self._control.queue({**self._tables.stats(), "fds": fd_count})
            elif op == "usage":
                self._control.queue({**self._tables.usage(framing.get_int(body, "domid"))})
            elif op == "shutdown":
                self._running = False
                self._control.queue({"ok": True})
            else:
                raise HypervisorError(errno.ENOSYS, f"unknown control request {op!r}")
        except (HypervisorError, ProtocolError) as exc:
            self._control.queue({"error": exc.errno, "message": exc.message})
        except OSError as exc:
            # EMFILE/ENFILE (listing /proc/self/fd, duplicating a reply's descriptors):
            # an answer for the host, never the end of every domain's hypervisor.
            self._control.queue({"error": exc.errno or errno.EIO, "message": str(exc)})
        finally:
            close_all(fds)

    def _add_domain(self, domid: int, sock_fd: int, pidfd: int) -> None:
        sock = socket.socket(fileno=sock_fd)
        link = self._links[domid] = _Link(sock, MAX_FDS_PER_REQUEST)
        self._pidfds[domid] = pidfd
        self._selector.register(
            sock, selectors.EVENT_READ, lambda mask: self._on_domain(domid, mask)
        )
        self._selector.register(pidfd, selectors.EVENT_READ, lambda _: self._destroy(domid, False))
        log.info("domain created", extra=logs.fields(domid=domid, socket=link.sock.fileno()))

    # -- domain sockets --------------------------------------------------------------

    def _on_domain(self, domid: int, mask: int) -> None:
        link = self._links[domid]
        if mask & selectors.EVENT_WRITE:
            self._flush(link, link.sock)
        # One request at a time, and none while replies wait: a domain that does not read
        # what it is sent cannot make the broker hold more than one reply for it.
        while mask & selectors.EVENT_READ and not link.outbound:
            try:
                message = link.read()
            except (EOFError, ConnectionError):
                self._destroy(domid, kill=False)
                return
            except ProtocolError as exc:
                log.warning("domain broke the framing", extra=logs.fields(domid=domid, error=exc))
                self._destroy(domid, kill=True)
                return
            except OSError as exc:
                link.queue({"error": exc.errno, "message": "broker out of descriptors"})
                self._deliver(last=domid)
                if self._links.get(domid) is not link:
                    return
                continue
            if message is None:
                return
            self._serve(domid, link, message)
            self._deliver(last=domid)
            if self._links.get(domid) is not link:
                return  # it stopped reading and was killed

    def _serve(self, domid: int, link: _Link, message: FramedMessage) -> None:
        fds = message.fds
        op = message.body.get("op")
        handler = self._handlers.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise HypervisorError(errno.ENOSYS, f"unknown request {op!r}")
            reply, out_fds, passed_on = handler(domid, message.body, fds)
            link.queue(reply, out_fds)
            close_all(passed_on)
        except (HypervisorError, ProtocolError) as exc:
            link.queue({"error": exc.errno, "message": exc.message})
        except OSError as exc:
            # The process ran out of something (EMFILE, ENFILE, ENOMEM): this request
            # fails, the broker serves on.
            link.queue({"error": exc.errno or errno.EIO, "message": str(exc)})
        except Exception:
            # A bug here must cost one request, not every domain its hypervisor.
            log.exception("request failed", extra=logs.fields(domid=domid, op=op))
            link.queue({"error": errno.EIO, "message": "internal error"})
        finally:
            close_all([fd for fd in fds if fd >= 0])
        self._apply_effects()

    def _deliver(self, last: int | None = None) -> None:
        """Flush every domain's queue, `last`'s after all others.

        The caller's reply goes last so that whatever its request changed for other
        domains (a port bound, a peer gone) is in their sockets before the caller can
        act on the reply: a peer told "bound" through XenStore can notify at once.
        """
        links = sorted(self._links.items(), key=lambda item: item[0] == last)
        for domid, link in links:
            if len(link.outbound) > MAX_QUEUED_RECORDS:
                log.warning("domain stopped reading", extra=logs.fields(domid=domid))
                self._destroy(domid, kill=True)
            elif link.outbound:
                self._flush(link, link.sock)

    def _flush(self, link: _Link, sock: socket.socket) -> None:
        try:
            done = link.flush()
        except OSError:
            # The peer is gone; drop what it will never read, so that reading resumes
            # and its socket's EOF tears it down.
            for _, fds in link.outbound:
                close_all(fds)
            link.outbound.clear()
            done = True
        data = self._selector.get_key(sock).data
        # Requests are not read while replies wait (see _on_domain).
        wanted = selectors.EVENT_READ if done else selectors.EVENT_WRITE
        self._selector.modify(sock, wanted, data)

    def _destroy(self, domid: int, kill: bool) -> None:
        link = self._links.pop(domid, None)
        if link is None:
            return
        pidfd = self._pidfds.pop(domid)
        self._selector.unregister(link.sock)
        self._selector.unregister(pidfd)
        link.close()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
        self._tables.destroy_domain(domid)
        self._apply_effects()
        self._deliver()
        log.info("domain released", extra=logs.fields(domid=domid, killed=kill))
        self._control.queue({"event": "released", "domid": domid})
        self._flush(self._control, self._control.sock)

    def _apply_effects(self) -> None:
        for effect in self._tables.take_effects():
            match effect:
                case AllocationFreed(alloc):
                    os.close(self._objects.pop(alloc))
                    readonly = self._readonly.pop(alloc, None)
                    if readonly is not None:
                        os.close(readonly)
                    del self._inodes[self._inode_of.pop(alloc)]
                case PortClosed(domid, port):
                    os.close(self._eventfds.pop((domid, port)))
                case PortBound(domid, port, remote_domid, remote_port):
                    self._links[domid].queue(
                        {
                            "event": "bound",
                            "port": port,
                            "remote_domid": remote_domid,
                            "remote_port": remote_port,
                        },
                        [self._eventfds[(remote_domid, remote_port)]],
                    )
                case PortUnbound(domid, port, remote_domid):
                    link = self._links.get(domid)
                    if link is not None:
                        link.queue({"event": "unbound", "port": port, "remote_domid": remote_domid})

    # -- requests: each returns (reply, descriptors to send, descriptors to close) --

    def _alloc(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        pages = framing.get_int(body, "pages")
        fd = self._new_memfd(pages, domid)
        try:
            alloc = self._tables.alloc(domid, pages)
        except HypervisorError:
            os.close(fd)
            raise
        self._add_object(alloc, fd)
        return {"alloc": alloc}, [fd], []

    def _share(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        grantee = framing.get_int(body, "domid", _MAX_DOMID)
        pages = framing.get_int(body, "pages")
        readonly = framing.get_bool(body, "readonly")
        fd = self._new_memfd(pages, domid)
        try:
            alloc, refs = self._tables.share(domid, grantee, pages, readonly)
        except HypervisorError:
            os.close(fd)
            raise
        self._add_object(alloc, fd)
        return {"alloc": alloc, "refs": framing.pack_u32s(refs)}, [fd], []

    def _free(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        deferred = self._tables.free(domid, framing.get_int(body, "alloc"))
        return {"deferred": framing.pack_u32s(deferred)}, [], []

    def _grant(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        refs = self._tables.grant(
            domid,
            framing.get_int(body, "domid", _MAX_DOMID),
            framing.get_int(body, "alloc"),
            framing.get_u32s(body, "pages", self._tables.limits.refs_per_call),
            framing.get_bool(body, "readonly"),
        )
        return {"refs": framing.pack_u32s(refs)}, [], []

    def _end(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        refs = framing.get_u32s(body, "refs", self._tables.limits.refs_per_call)
        return {"deferred": framing.pack_u32s(self._tables.end_access(domid, refs))}, [], []

    def _map(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        writable = framing.get_bool(body, "writable")
        map_id, layout = self._tables.map(
            domid,
            framing.get_int(body, "domid", _MAX_DOMID),
            framing.get_u32s(body, "refs", self._tables.limits.refs_per_call),
            writable,
        )
        try:
            objects = [self._object_fd(alloc, writable) for alloc in layout.objects]
        except OSError:
            self._tables.unmap(domid, map_id)  # no descriptor for a read-only reopen
            raise
        return {"map": map_id, "segments": _triples(layout.segments)}, objects, []

    def _unmap(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        self._tables.unmap(domid, framing.get_int(body, "map"))
        return {}, [], []

    def _export(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        writable = framing.get_bool(body, "writable")
        granter = framing.get_int(body, "domid", _MAX_DOMID)
        refs = framing.get_u32s(body, "refs", self._tables.limits.refs_per_call)
        watch, lease = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        exporter_watch = os.dup(watch)
        try:
            export_id, layout = self._tables.export(domid, granter, refs, writable)
        except BaseException:
            close_all([watch, lease, exporter_watch])
            raise
        try:
            objects = [self._object_fd(alloc, writable) for alloc in layout.objects]
        except OSError:
            self._tables.release_export(export_id)  # no descriptor for a read-only reopen
            close_all([watch, lease, exporter_watch])
            raise
        self._selector.register(
            watch, selectors.EVENT_READ, lambda _: self._on_released(export_id, watch)
        )
        reply: JsonObject = {"id": export_id, "segments": _triples(layout.segments)}
        return reply, [*objects, lease, exporter_watch], [lease, exporter_watch]

    def _on_released(self, export_id: str, watch: int) -> None:
        self._selector.unregister(watch)
        os.close(watch)
        self._tables.release_export(export_id)
        self._apply_effects()
        self._deliver()

    def _import(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        grantee = framing.get_int(body, "domid", _MAX_DOMID)
        readonly = framing.get_bool(body, "readonly")
        segments = [
            Segment(*t)
            for t in framing.get_triples(body, "segments", self._tables.limits.refs_per_call)
        ]
        objects: list[int | NewObject] = []
        inodes = []
        for fd in fds:
            stat = os.fstat(fd)
            inode = (stat.st_dev, stat.st_ino)
            if inode in inodes:
                raise HypervisorError(errno.EINVAL, "the same memory object passed twice")
            inodes.append(inode)
            known = self._inodes.get(inode)
            if known is None:
                writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
                objects.append(NewObject(sealed_pages(fd), writable))
            else:
                objects.append(known)
        imported = self._tables.import_buffer(domid, grantee, objects, segments, readonly)
        for index, alloc in imported.adopted.items():
            self._add_object(alloc, fds[index])
            fds[index] = -1
        return {"id": imported.id, "refs": framing.pack_u32s(imported.refs)}, [], []

    def _release(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        deferred = self._tables.release_import(domid, framing.get_str(body, "id"))
        return {"deferred": framing.pack_u32s(deferred)}, [], []

    def _evtchn_unbound(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        remote = framing.get_int(body, "domid", _MAX_DOMID)
        eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            port = self._tables.alloc_unbound(domid, remote)
        except HypervisorError:
            os.close(eventfd)
            raise
        self._eventfds[(domid, port)] = eventfd
        return {"port": port}, [eventfd], []

    def _evtchn_bind(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        remote = framing.get_int(body, "domid", _MAX_DOMID)
        remote_port = framing.get_int(body, "port")
        eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            port = self._tables.bind_interdomain(domid, remote, remote_port)
        except HypervisorError:
            os.close(eventfd)
            raise
        self._eventfds[(domid, port)] = eventfd
        return {"port": port}, [eventfd, self._eventfds[(remote, remote_port)]], []

    def _evtchn_unbind(self, domid: int, body: JsonObject, fds: list[int]) -> _Reply:
        self._tables.unbind(domid, framing.get_int(body, "port"))
        return {}, [], []

    # -- memory objects ------------------------------------------------------------

    def _new_memfd(self, pages: int, domid: int) -> int:
        if not 0 < pages <= self._tables.limits.memory_pages:
            raise HypervisorError(errno.ENOMEM, f"{pages} pages over the memory limit")
        try:
            return create_memfd(pages, f"pvdisplay-dom{domid}")
        except OSError as exc:
            raise HypervisorError(exc.errno or errno.ENOMEM, f"memfd: {exc}") from None

    def _add_object(self, alloc: int, fd: int) -> None:
        """Index a memory object by inode too, so an import can tell whose it is."""
        stat = os.fstat(fd)
        self._objects[alloc] = fd
        self._inodes[(stat.st_dev, stat.st_ino)] = alloc
        self._inode_of[alloc] = (stat.st_dev, stat.st_ino)

    def _object_fd(self, alloc: int, writable: bool) -> int:
        """The descriptor to hand out: read-only grants get an O_RDONLY reopen."""
        if writable:
            return self._objects[alloc]
        readonly = self._readonly.get(alloc)
        if readonly is None:
            path = f"/proc/self/fd/{self._objects[alloc]}"
            readonly = self._readonly[alloc] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return readonly


def _triples(segments: Sequence[Segment]) -> list[list[int]]:
    return [[s.object_index, s.first_page, s.pages] for s in segments]


def _harden() -> int:
    """No core dumps or same-uid /proc/<pid>/fd access to the memory we hold; returns the
    descriptor limit, raised to the hard one."""
    pr_set_dumpable = 4
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)
    return raise_descriptor_limit()


def main(argv: Sequence[str]) -> int:
    control_fd, limits_json = argv
    logs.configure(os.environ.get("PVDISPLAY_HV_LOG_LEVEL", "warning"))
    descriptor_limit = _harden()
    control = socket.socket(fileno=int(control_fd))
    os.set_inheritable(control.fileno(), False)
    limits = Limits(**json.loads(limits_json))
    Broker(control, limits, descriptor_limit // FD_RESERVE_SHARE).run()
    return 0


def limits_argument(limits: Limits) -> str:
    return json.dumps(asdict(limits))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
