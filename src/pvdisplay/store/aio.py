"""asyncio XenStore client: the same requests as `client.Client`, awaited.

One reader task per connection feeds the sans-IO `ClientProtocol`, resolves the
future of each reply and wakes the watches that received events. Any number of
tasks may issue requests concurrently; they are pipelined on the socket.
"""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Self, TypeVar

from pvdisplay.store import protocol
from pvdisplay.store.client import DEFAULT_TRANSACTION_ATTEMPTS
from pvdisplay.store.permissions import Permission
from pvdisplay.store.protocol import (
    DEFAULT_MAX_PENDING_EVENTS,
    ClientProtocol,
    Request,
    WatchEvent,
)
from pvdisplay.store.transport import MessageWriter, open_streams
from pvdisplay.wire.xs_wire import XsMessage

T = TypeVar("T")

_READ_SIZE = 65536


class _AsyncOperations:
    """The node operations, for plain requests (tx_id 0) and inside a transaction."""

    async def _call(self, request: Request[T]) -> T:
        raise NotImplementedError

    async def read(self, path: str) -> bytes:
        return await self._call(protocol.read(path))

    async def write(self, path: str, value: bytes | str) -> None:
        await self._call(protocol.write(path, value))

    async def mkdir(self, path: str) -> None:
        await self._call(protocol.mkdir(path))

    async def rm(self, path: str) -> None:
        await self._call(protocol.rm(path))

    async def ls(self, path: str) -> list[str]:
        return await self._call(protocol.ls(path))

    async def exists(self, path: str) -> bool:
        return await self._call(protocol.exists(path))

    async def get_permissions(self, path: str) -> list[Permission]:
        return await self._call(protocol.get_permissions(path))

    async def set_permissions(self, path: str, permissions: Iterable[Permission]) -> None:
        await self._call(protocol.set_permissions(path, permissions))


class AsyncClient(_AsyncOperations):
    """A connection to xenstored; create it with `await AsyncClient.connect(path)`."""

    def __init__(
        self,
        path: str,
        reader: asyncio.StreamReader,
        writer: MessageWriter,
        max_pending_events: int,
    ) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._protocol = ClientProtocol(max_pending_events)
        self._pending: dict[int, asyncio.Future[XsMessage]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._closed = False
        self._failure: BaseException | None = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
    ) -> Self:
        """Connect to `path` (a socket or the xenbus device), or to the socket
        `client.default_socket_path()` names."""
        resolved, reader, writer = await open_streams(path)
        return cls(resolved, reader, writer, max_pending_events)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect; open watches end their iteration, other calls raise ConnectionError."""
        if self._closed:
            return
        self._closed = True
        self._reader_task.cancel()
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        self._wake_everyone()

    async def _read_loop(self) -> None:
        try:
            while data := await self._reader.read(_READ_SIZE):
                arrivals = self._protocol.receive(data)
                for req_id in arrivals.replies:
                    reply = self._protocol.take_reply(req_id)
                    future = self._pending.pop(req_id, None)
                    if reply is not None and future is not None and not future.done():
                        future.set_result(reply)
                for token in arrivals.event_tokens:
                    self._wakeups[token].set()
            self._fail(ConnectionResetError("xenstored closed the connection"))
        except Exception as exc:  # whatever stops the reader must reach every waiter
            self._fail(exc)

    def _fail(self, cause: BaseException) -> None:
        if self._closed or self._failure is not None:
            return
        self._failure = cause
        self._writer.close()
        self._wake_everyone()

    def _wake_everyone(self) -> None:
        error = protocol.connection_error(self.path, self._failure)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for wakeup in self._wakeups.values():
            wakeup.set()

    def _raise_if_unusable(self) -> None:
        if self._closed or self._failure is not None:
            raise protocol.connection_error(self.path, self._failure)

    async def _call(self, request: Request[T]) -> T:
        return await self._exchange(request, 0)

    async def _exchange(self, request: Request[T], tx_id: int) -> T:
        self._raise_if_unusable()
        req_id, data = self._protocol.send(request, tx_id)
        future: asyncio.Future[XsMessage] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            self._writer.write(data)
            await self._writer.drain()
            reply = await future
        except BaseException:
            self._pending.pop(req_id, None)
            self._protocol.abandon(req_id)
            raise
        return request.result(reply)

    async def watch(self, path: str, token: str | None = None) -> "AsyncWatch":
        """Watch `path` and everything below it; the first event names `path` itself.

        `token` must be unique among this client's watches; by default one is made up.
        """
        self._raise_if_unusable()
        chosen = self._protocol.add_watch(path, token)
        self._wakeups[chosen] = asyncio.Event()
        try:
            await self._call(protocol.watch(path, chosen))
        except BaseException:
            self._forget_watch(chosen)
            raise
        return AsyncWatch(self, path, chosen)

    def _forget_watch(self, token: str) -> bool:
        """Stop the watch and wake its reader; False if it was not watching."""
        wakeup = self._wakeups.pop(token, None)
        if wakeup is not None:
            wakeup.set()
        return self._protocol.remove_watch(token)

    async def _unwatch(self, watch: "AsyncWatch") -> None:
        if not self._forget_watch(watch.token):
            return
        if self._closed or self._failure is not None:
            return
        await self._call(protocol.unwatch(watch.path, watch.token))

    async def _next_event(self, token: str) -> WatchEvent:
        while True:
            if self._closed or not self._protocol.is_watching(token):
                raise StopAsyncIteration
            event = self._protocol.take_event(token)
            if event is not None:
                return event
            if self._failure is not None:
                raise protocol.connection_error(self.path, self._failure)
            wakeup = self._wakeups[token]
            wakeup.clear()
            await wakeup.wait()

    async def start_transaction(self) -> "AsyncTransaction":
        """Begin a transaction; finish it with commit() or abort() (or `async with`)."""
        return AsyncTransaction(self, await self._call(protocol.transaction_start()))

    async def transact(
        self,
        body: Callable[["AsyncTransaction"], Awaitable[T]],
        attempts: int = DEFAULT_TRANSACTION_ATTEMPTS,
    ) -> T:
        """Await body(txn) and commit, rerunning from scratch while the daemon says EAGAIN.

        Any other exception aborts the transaction and propagates. After `attempts`
        conflicts the last EAGAIN XenStoreError (a BlockingIOError) propagates.
        """
        for attempt in protocol.transaction_attempts(attempts):
            txn = await self.start_transaction()
            try:
                result = await body(txn)
                await txn.commit()
            except BaseException as exc:
                await txn.abort()
                if protocol.retries_transaction(exc, attempt, attempts):
                    continue
                raise
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def introduce(self, domid: int, mfn: int, evtchn: int) -> None:
        """Tell the daemon about a domain's store ring page and event channel."""
        await self._call(protocol.introduce(domid, mfn, evtchn))

    async def release(self, domid: int) -> None:
        await self._call(protocol.release(domid))

    async def get_domain_path(self, domid: int) -> str:
        return await self._call(protocol.get_domain_path(domid))

    async def is_domain_introduced(self, domid: int) -> bool:
        return await self._call(protocol.is_domain_introduced(domid))

    async def set_target(self, domid: int, target: int) -> None:
        """Give `domid` (a device model's stub domain) the privileges of `target`."""
        await self._call(protocol.set_target(domid, target))


class AsyncTransaction(_AsyncOperations):
    """Node operations that take effect together when `commit()` succeeds."""

    def __init__(self, client: AsyncClient, tx_id: int) -> None:
        self._client = client
        self.tx_id = tx_id
        self._finished = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.abort()

    async def _call(self, request: Request[T]) -> T:
        if self._finished:
            raise ValueError(f"transaction {self.tx_id} is already finished")
        return await self._client._exchange(request, self.tx_id)

    async def commit(self) -> None:
        """Apply the transaction; raises XenStoreError EAGAIN if another change won the race."""
        await self._end(commit=True)

    async def abort(self) -> None:
        """Discard the transaction; does nothing once it is finished."""
        if not self._finished:
            await self._end(commit=False)

    async def _end(self, commit: bool) -> None:
        # xenstored forgets the transaction on any answer to TRANSACTION_END, EAGAIN too.
        try:
            await self._call(protocol.transaction_end(commit))
        finally:
            self._finished = True


class AsyncWatch:
    """Events for one watched path, in the order the daemon sent them.

    `async for` ends after `unwatch()` or `AsyncClient.close()`, and raises
    ConnectionError if the connection breaks. Use asyncio.timeout() for deadlines.
    Events not yet taken when unwatched are dropped.
    """

    def __init__(self, client: AsyncClient, path: str, token: str) -> None:
        self._client = client
        self.path = path
        self.token = token

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        return await self._client._next_event(self.token)

    async def unwatch(self) -> None:
        await self._client._unwatch(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.unwatch()
