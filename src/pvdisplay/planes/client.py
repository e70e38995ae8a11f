"""Blocking client of the planes socket (`pvdisplay.planes.server`), one request at a time."""

import os
import socket
from collections.abc import Iterator, Sequence
from typing import Self

import numpy as np
import numpy.typing as npt

from pvdisplay.ipc import framing
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.sockets import close_all, receive_message, send_message
from pvdisplay.planes import input_events, protocol
from pvdisplay.planes.input_events import InputReceipt
from pvdisplay.planes.model import PlaneInfo, PlaneKey
from pvdisplay.planes.protocol import PlaneChange


class PlaneClient:
    """Blocking client of a `PlaneServer` socket (one request at a time)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except BaseException:
            self._sock.close()
            raise

    def list(self) -> list[PlaneInfo]:
        return protocol.planes_of(self._call(protocol.LIST))

    def get(
        self, domid: int, connector: int, devid: int = 0
    ) -> tuple[PlaneInfo, SharedBuffer | None]:
        """The plane and a handle of its buffer (close it when done), or ENOENT."""
        reply = self._call(protocol.get_request(PlaneKey(domid, devid, connector)))
        info, buffer_follows = protocol.plane_of(reply)
        return info, SharedBuffer.receive(self._sock) if buffer_follows else None

    def snapshot(
        self, domid: int, connector: int, devid: int = 0
    ) -> tuple[PlaneInfo, npt.NDArray[np.uint8]]:
        """A copy of one frame on screen: `frame_bytes` bytes from the plane's offset.

        The server copies it while the guest cannot complete a flip (docs/planes.md), so
        a guest drawing its next frame meanwhile cannot tear it.
        Convert with `pvdisplay.wire.fourcc.to_rgb(fmt, pixels, width, height, stride)`.
        ENOENT when the connector shows nothing.
        """
        reply = self._call(protocol.copy_request(PlaneKey(domid, devid, connector)))
        info, _ = protocol.plane_of(reply)
        handle = SharedBuffer.receive(self._sock)
        try:
            with handle.map() as mapping:
                view = mapping.array()
                pixels = np.array(view[: info.frame_bytes], dtype=np.uint8)
                del view
        finally:
            handle.close()
        return info, pixels

    def send_input(self, key: PlaneKey, events: Sequence[input_events.InputEvent]) -> InputReceipt:
        """Send `events` (connector pixels) to the vkbd bound to connector `key`.

        Raises OSError(ENOENT) when no connected input device is bound to it.
        """
        return protocol.receipt_of(self._call(protocol.input_request(key, events)))

    def watch(self) -> Iterator[PlaneChange]:
        """Every change from now on (registered before returning); use a dedicated client."""
        self._call(protocol.WATCH)
        self._sock.settimeout(None)
        return self._changes()

    def _changes(self) -> Iterator[PlaneChange]:
        while True:
            message = receive_message(self._sock)
            close_all(message.fds)
            yield protocol.change_of(message.body)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, body: framing.JsonObject) -> framing.JsonObject:
        send_message(self._sock, body)
        reply = receive_message(self._sock)
        close_all(reply.fds)
        return protocol.checked(reply.body)
