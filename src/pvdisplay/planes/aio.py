"""The asyncio client of the planes socket (`pvdisplay.planes.server`): what outputs use.

Records are read without blocking as the loop reports the socket readable and assembled
by `pvdisplay.ipc.framing`, descriptors included, so a buffer handle arrives here as it
does in the blocking client, without a thread.
"""

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Self

from pvdisplay.ipc import framing
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.sockets import close_all, recv_record
from pvdisplay.planes import input_events, protocol
from pvdisplay.planes.input_events import InputReceipt
from pvdisplay.planes.model import PlaneInfo, PlaneKey
from pvdisplay.planes.protocol import PlaneChange


class AsyncPlaneClient:
    """One connection to a `PlaneServer`; `connect`, then requests (one at a time, in
    order: concurrent callers queue), or `watch` on a connection of its own."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._assembler = framing.Assembler()
        self._turn = asyncio.Lock()

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> Self:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, str(Path(path)))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def list(self) -> list[PlaneInfo]:
        async with self._turn:
            return protocol.planes_of(await self._call(protocol.LIST))

    async def get(self, key: PlaneKey) -> tuple[PlaneInfo, SharedBuffer | None]:
        """The plane and a handle of its buffer (close it when done); OSError(ENOENT) when
        the connector has no plane."""
        async with self._turn:
            info, buffer_follows = protocol.plane_of(await self._call(protocol.get_request(key)))
            if not buffer_follows:
                return info, None
            return info, SharedBuffer.from_message(await self._receive())

    async def send_input(
        self, key: PlaneKey, events: Sequence[input_events.InputEvent]
    ) -> InputReceipt:
        """Send `events` (connector pixels) to the vkbd bound to connector `key`; OSError
        (ENOENT) when no connected input device is bound to it."""
        async with self._turn:
            return protocol.receipt_of(await self._call(protocol.input_request(key, events)))

    async def watch(self) -> AsyncIterator[PlaneChange]:
        """Every change from now on (registered before this returns), in order, until the
        server goes (EOFError); the connection then serves nothing else."""
        async with self._turn:
            await self._call(protocol.WATCH)
        return self._changes()

    async def _changes(self) -> AsyncIterator[PlaneChange]:
        while True:
            message = await self._receive()
            close_all(message.fds)
            yield protocol.change_of(message.body)

    def close(self) -> None:
        self._sock.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def _call(self, body: framing.JsonObject) -> framing.JsonObject:
        for record, fds in framing.encode(body):
            assert not fds  # requests carry no descriptors
            await self._loop.sock_sendall(self._sock, record)
        reply = await self._receive()
        close_all(reply.fds)
        return protocol.checked(reply.body)

    async def _receive(self) -> framing.FramedMessage:
        """The next whole message; EOFError once the server has gone."""
        while True:
            try:
                record, fds = recv_record(self._sock)
            except BlockingIOError:
                await self._readable()
                continue
            try:
                message = self._assembler.feed(record, fds)
            except BaseException:
                close_all(self._assembler.fds)
                self._assembler.fds.clear()
                raise
            if message is not None:
                return message

    async def _readable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        fd = self._sock.fileno()
        self._loop.add_reader(fd, _set, ready)
        try:
            await ready
        finally:
            self._loop.remove_reader(fd)


def _set(ready: asyncio.Future[None]) -> None:
    if not ready.done():  # the loop may report readiness again before the waiter runs
        ready.set_result(None)
