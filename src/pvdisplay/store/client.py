"""Blocking XenStore client over a xenstored Unix socket or the xenbus device.

Thread-safe without a thread of its own: any number of threads may share one
`Client`. Each request is written whole under a send lock, so requests from
different threads are pipelined; whichever thread is waiting (for a reply or a
watch event) reads the socket and routes everything it reads, replies to their
requesters and watch events to their watch's queue, while the other waiters
sleep on a condition until their item has been routed or it is their turn to read.
"""

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Self, TypeVar

from pvdisplay.store import protocol
from pvdisplay.store.permissions import Permission
from pvdisplay.store.protocol import (
    DEFAULT_MAX_PENDING_EVENTS,
    ClientProtocol,
    Request,
    WatchEvent,
)
from pvdisplay.store.transport import connect, default_socket_path

__all__ = ["Client", "Transaction", "Watch", "default_socket_path"]
from pvdisplay.wire.errors import ProtocolError

T = TypeVar("T")
X = TypeVar("X")

DEFAULT_TRANSACTION_ATTEMPTS = 16
_RECV_SIZE = 65536


class _Operations:
    """The node operations, for plain requests (tx_id 0) and inside a transaction."""

    def _call(self, request: Request[T]) -> T:
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        return self._call(protocol.read(path))

    def write(self, path: str, value: bytes | str) -> None:
        self._call(protocol.write(path, value))

    def mkdir(self, path: str) -> None:
        self._call(protocol.mkdir(path))

    def rm(self, path: str) -> None:
        self._call(protocol.rm(path))

    def ls(self, path: str) -> list[str]:
        return self._call(protocol.ls(path))

    def exists(self, path: str) -> bool:
        return self._call(protocol.exists(path))

    def get_permissions(self, path: str) -> list[Permission]:
        return self._call(protocol.get_permissions(path))

    def set_permissions(self, path: str, permissions: Iterable[Permission]) -> None:
        self._call(protocol.set_permissions(path, permissions))


class Client(_Operations):
    """A connection to xenstored; see the module docstring for threading."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
    ) -> None:
        self.path, self._sock = connect(path)
        self._protocol = ClientProtocol(max_pending_events)
        self._state = threading.Condition()
        self._send_lock = threading.Lock()
        self._reading = False
        self._closed = False
        self._failure: BaseException | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; open watches end their iteration, other calls raise ConnectionError."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _call(self, request: Request[T]) -> T:
        return self._exchange(request, 0)

    def _exchange(self, request: Request[T], tx_id: int) -> T:
        with self._state:
            self._raise_if_unusable()
            req_id, data = self._protocol.send(request, tx_id)
        try:
            self._send(data)
            reply = self._wait(lambda: self._protocol.take_reply(req_id), None)
        except BaseException:
            with self._state:
                self._protocol.abandon(req_id)
            raise
        assert reply is not None, "waiting without a deadline returns a reply"
        return request.result(reply)

    def _send(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            with self._state:
                self._fail(exc)
                self._state.notify_all()
                self._raise_if_unusable()
            raise

    def _raise_if_unusable(self) -> None:
        if self._closed or self._failure is not None:
            raise protocol.connection_error(self.path, self._failure)

    def _wait(self, ready: Callable[[], X | None], timeout: float | None) -> X | None:
        """Until `ready()` gives something, read the socket or wait for whoever does.

        `ready` runs under the state lock. Returns None only when `timeout` passes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            while True:
                result = ready()
                if result is not None:
                    return result
                self._raise_if_unusable()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if not self._reading:
                    self._reading = True
                    break
                self._state.wait(remaining)
        try:
            return self._read_until(ready, deadline)
        finally:
            with self._state:
                self._reading = False
                self._state.notify_all()

    def _read_until(self, ready: Callable[[], X | None], deadline: float | None) -> X | None:
        while True:
            error: BaseException | None = None
            data = b""
            try:
                if deadline is not None:
                    remaining = max(0.0, deadline - time.monotonic())
                    readable, _, _ = select.select([self._sock], [], [], remaining)
                    if not readable:
                        return None
                data = self._sock.recv(_RECV_SIZE)
            except (OSError, ValueError) as exc:
                error = exc
            with self._state:
                if error is not None or not data:
                    self._fail(error or ConnectionResetError("xenstored closed the connection"))
                else:
                    try:
                        self._protocol.receive(data)
                    except ProtocolError as exc:
                        self._fail(exc)
                self._state.notify_all()
                result = ready()
                if result is not None:
                    return result
                self._raise_if_unusable()

    def _fail(self, cause: BaseException) -> None:
        """Record why the connection broke, unless it broke because we closed it."""
        if self._closed or self._failure is not None:
            return
        self._failure = cause
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def watch(self, path: str, token: str | None = None) -> "Watch":
        """Watch `path` and everything below it; the first event names `path` itself.

        `token` must be unique among this client's watches; by default one is made up.
        """
        with self._state:
            self._raise_if_unusable()
            chosen = self._protocol.add_watch(path, token)
        try:
            self._call(protocol.watch(path, chosen))
        except BaseException:
            with self._state:
                self._protocol.remove_watch(chosen)
            raise
        return Watch(self, path, chosen)

    def _unwatch(self, watch: "Watch") -> None:
        with self._state:
            if not self._protocol.remove_watch(watch.token):
                return
            self._state.notify_all()
            if self._closed or self._failure is not None:
                return
        self._call(protocol.unwatch(watch.path, watch.token))

    def _next_event(self, token: str, timeout: float | None) -> WatchEvent | None:
        """The next event for `token`, None on timeout; raises StopIteration once unwatched."""
        ended = WatchEvent("", token)

        def ready() -> WatchEvent | None:
            if self._closed or not self._protocol.is_watching(token):
                return ended
            return self._protocol.take_event(token)

        event = self._wait(ready, timeout)
        if event is ended:
            raise StopIteration
        return event

    def start_transaction(self) -> "Transaction":
        """Begin a transaction; finish it with commit() or abort() (or a `with` block)."""
        return Transaction(self, self._call(protocol.transaction_start()))

    def transact(
        self,
        body: Callable[["Transaction"], T],
        attempts: int = DEFAULT_TRANSACTION_ATTEMPTS,
    ) -> T:
        """Run body(txn) and commit, rerunning from scratch while the daemon says EAGAIN.

        Any other exception aborts the transaction and propagates. After `attempts`
        conflicts the last EAGAIN XenStoreError (a BlockingIOError) propagates.
        """
        for attempt in protocol.transaction_attempts(attempts):
            txn = self.start_transaction()
            try:
                result = body(txn)
                txn.commit()
            except BaseException as exc:
                txn.abort()
                if protocol.retries_transaction(exc, attempt, attempts):
                    continue
                raise
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def introduce(self, domid: int, mfn: int, evtchn: int) -> None:
        """Tell the daemon about a domain's store ring page and event channel."""
        self._call(protocol.introduce(domid, mfn, evtchn))

    def release(self, domid: int) -> None:
        self._call(protocol.release(domid))

    def get_domain_path(self, domid: int) -> str:
        return self._call(protocol.get_domain_path(domid))

    def is_domain_introduced(self, domid: int) -> bool:
        return self._call(protocol.is_domain_introduced(domid))

    def set_target(self, domid: int, target: int) -> None:
        """Give `domid` (a device model's stub domain) the privileges of `target`."""
        self._call(protocol.set_target(domid, target))


class Transaction(_Operations):
    """Node operations that take effect together when `commit()` succeeds."""

    def __init__(self, client: Client, tx_id: int) -> None:
        self._client = client
        self.tx_id = tx_id
        self._finished = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    def _call(self, request: Request[T]) -> T:
        if self._finished:
            raise ValueError(f"transaction {self.tx_id} is already finished")
        return self._client._exchange(request, self.tx_id)

    def commit(self) -> None:
        """Apply the transaction; raises XenStoreError EAGAIN if another change won the race."""
        self._end(commit=True)

    def abort(self) -> None:
        """Discard the transaction; does nothing once it is finished."""
        if not self._finished:
            self._end(commit=False)

    def _end(self, commit: bool) -> None:
        # xenstored forgets the transaction on any answer to TRANSACTION_END, EAGAIN too.
        try:
            self._call(protocol.transaction_end(commit))
        finally:
            self._finished = True


class Watch:
    """Events for one watched path, in the order the daemon sent them.

    Iterate to block for the next event; iteration ends after `unwatch()` (from
    any thread) or `Client.close()`, and raises ConnectionError if the connection
    breaks. Events not yet taken when unwatched are dropped.
    """

    def __init__(self, client: Client, path: str, token: str) -> None:
        self._client = client
        self.path = path
        self.token = token

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        event = self._client._next_event(self.token, None)
        assert event is not None, "waiting without a deadline returns an event"
        return event

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, or None if none arrives within `timeout` seconds.

        Raises StopIteration once the watch has ended, as `next()` does.
        """
        return self._client._next_event(self.token, timeout)

    def unwatch(self) -> None:
        self._client._unwatch(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unwatch()
