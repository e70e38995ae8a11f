"""Blocking client of the planes socket (`pvdisplay.planes.server`), one request at a time."""

import errno
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np
import numpy.typing as npt

from pvdisplay.ipc import framing
from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.ipc.sockets import close_all, receive_message, send_message
from pvdisplay.planes import input_events
from pvdisplay.planes.input_events import InputReceipt
from pvdisplay.planes.model import PlaneInfo, PlaneKey
from pvdisplay.wire.errors import ProtocolError


@dataclass(frozen=True)
class PlaneChange:
    plane: PlaneInfo
    removed: bool


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
        reply = self._call({"op": "list"})
        planes = reply.get("planes")
        if not isinstance(planes, list):
            raise ProtocolError(errno.EINVAL, "list reply without planes")
        return [PlaneInfo.from_json(p) for p in planes]

    def get(
        self, domid: int, connector: int, devid: int = 0
    ) -> tuple[PlaneInfo, SharedBuffer | None]:
        """The plane and a handle of its buffer (close it when done), or ENOENT."""
        reply = self._call({"op": "get", "domid": domid, "devid": devid, "connector": connector})
        info = PlaneInfo.from_json(reply.get("plane"))
        handle = SharedBuffer.receive(self._sock) if reply.get("buffer") is True else None
        return info, handle

    def snapshot(
        self, domid: int, connector: int, devid: int = 0
    ) -> tuple[PlaneInfo, npt.NDArray[np.uint8]]:
        """A copy of the picture on screen: `frame_bytes` bytes from the plane's offset.

        Convert with `pvdisplay.wire.fourcc.to_rgb(fmt, pixels, width, height, stride)`.
        ENOENT when the connector shows nothing.
        """
        info, handle = self.get(domid, connector, devid)
        if handle is None:
            raise FileNotFoundError(errno.ENOENT, f"connector {domid}/{devid}/{connector} is blank")
        try:
            with handle.map() as mapping:
                view = mapping.array()
                end = min(info.offset + info.frame_bytes, view.size)
                pixels = np.array(view[info.offset : end], dtype=np.uint8)
                del view
        finally:
            handle.close()
        return info, pixels

    def send_input(self, key: PlaneKey, events: Sequence[input_events.InputEvent]) -> InputReceipt:
        """Send `events` (connector pixels) to the vkbd bound to connector `key`.

        Raises OSError(ENOENT) when no connected input device is bound to it.
        """
        reply = self._call(
            {
                "op": "input",
                "domid": key.domid,
                "devid": key.devid,
                "connector": key.connector,
                "events": [input_events.to_json(event) for event in events],
            }
        )
        queued, dropped = reply.get("queued"), reply.get("dropped")
        if not isinstance(queued, int) or not isinstance(dropped, int):
            raise ProtocolError(errno.EINVAL, "input reply without queued/dropped")
        return InputReceipt(queued, dropped)

    def watch(self) -> Iterator[PlaneChange]:
        """Every change from now on (registered before returning); use a dedicated client."""
        self._call({"op": "watch"})
        self._sock.settimeout(None)
        return self._changes()

    def _changes(self) -> Iterator[PlaneChange]:
        while True:
            message = receive_message(self._sock)
            close_all(message.fds)
            yield PlaneChange(
                PlaneInfo.from_json(message.body.get("plane")),
                message.body.get("event") == "removed",
            )

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, body: framing.JsonObject) -> framing.JsonObject:
        send_message(self._sock, body)
        reply = receive_message(self._sock)
        close_all(reply.fds)
        error = reply.body.get("error")
        if isinstance(error, int):
            raise OSError(error, str(reply.body.get("message", "")))
        return reply.body
