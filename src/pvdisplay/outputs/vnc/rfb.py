"""The RFB protocol (RFC 6143) as a server speaks it, sans-IO.

`ServerConnection` takes the bytes a client sent and returns events; what the server
must answer during the handshake (version, security, ServerInit) it queues for
`data_to_send()`. Framebuffer updates are built by `pvdisplay.outputs.vnc.updates`
and written by the adapter after whatever this queued.

Handshake by version (the server announces 3.8; the client picks):

- 3.3: the server decides the security type (u32); VNC authentication sends a
  SecurityResult, None does not.
- 3.7: the server lists types, the client picks one; SecurityResult only after VNC auth.
- 3.8: as 3.7, but a SecurityResult always follows, with a reason string on failure.

Any client bytes the state machine cannot accept end in a `Closed` event (and a closed
state), never an exception.
"""

import enum
import errno
import hmac
import re
import struct
from dataclasses import dataclass
from typing import Final

from pvdisplay.outputs.feed.rect import Rect
from pvdisplay.outputs.vnc import des
from pvdisplay.outputs.vnc.pixels import PIXEL_FORMAT_SIZE, SERVER_FORMAT, RfbPixelFormat
from pvdisplay.wire.errors import ProtocolError

SERVER_VERSION: Final = b"RFB 003.008\n"
VERSION_LENGTH: Final = len(SERVER_VERSION)
CHALLENGE_SIZE: Final = 16
MAX_CUT_TEXT: Final = 1 << 20

SECURITY_NONE: Final = 1
SECURITY_VNC: Final = 2

ENCODING_RAW: Final = 0
ENCODING_COPYRECT: Final = 1
ENCODING_ZRLE: Final = 16
ENCODING_DESKTOP_SIZE: Final = -223
ENCODING_NAMES: Final = {
    ENCODING_RAW: "Raw",
    ENCODING_COPYRECT: "CopyRect",
    ENCODING_ZRLE: "ZRLE",
    ENCODING_DESKTOP_SIZE: "DesktopSize",
}

_VERSION_PATTERN: Final = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


class State(enum.Enum):
    VERSION = "version"
    SECURITY = "security"
    AUTHENTICATION = "authentication"
    CLIENT_INIT = "client-init"
    SERVER_INIT = "server-init"
    NORMAL = "normal"
    CLOSED = "closed"


@dataclass(frozen=True)
class ClientInit:
    """The handshake is done; answer with `ServerConnection.server_init`."""

    shared: bool


@dataclass(frozen=True)
class SetPixelFormat:
    pixel_format: RfbPixelFormat


@dataclass(frozen=True)
class SetEncodings:
    encodings: tuple[int, ...]


@dataclass(frozen=True)
class UpdateRequest:
    incremental: bool
    area: Rect


@dataclass(frozen=True)
class KeyEvent:
    down: bool
    keysym: int


@dataclass(frozen=True)
class PointerEvent:
    buttons: int
    x: int
    y: int


@dataclass(frozen=True)
class CutText:
    text: bytes


@dataclass(frozen=True)
class Closed:
    reason: str


Event = (
    ClientInit | SetPixelFormat | SetEncodings | UpdateRequest | KeyEvent | PointerEvent | CutText
) | Closed


class ServerConnection:
    """One client's RFB session on the server side.

    `password` None offers security None; a password offers only VNC authentication,
    checked against `challenge` (16 random bytes the adapter supplies).
    """

    def __init__(self, password: str | None, challenge: bytes) -> None:
        if len(challenge) != CHALLENGE_SIZE:
            raise ValueError("the VNC challenge is 16 bytes")
        self.password = password
        self.challenge = challenge
        self.state = State.VERSION
        self.minor_version = 0
        self.pixel_format = SERVER_FORMAT
        self._buffer = bytearray()
        self._outgoing = bytearray(SERVER_VERSION)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def security_type(self) -> int:
        return SECURITY_NONE if self.password is None else SECURITY_VNC

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive(self, data: bytes) -> list[Event]:
        """Feed client bytes; returns what they meant. After `Closed`, input is ignored."""
        if self.closed:
            return []
        self._buffer += data
        events: list[Event] = []
        try:
            while not self.closed:
                event = self._step()
                if event is None:
                    break
                if not isinstance(event, _Progress):
                    events.append(event)
        except ProtocolError as error:
            events.append(self._close(error.message))
        if self.closed:
            self._buffer.clear()
        return events

    def server_init(self, width: int, height: int, name: str) -> None:
        """Queue ServerInit: the framebuffer size, our pixel format and the desktop name."""
        if self.state is not State.SERVER_INIT:
            raise RuntimeError(f"ServerInit in state {self.state.value}")
        encoded = name.encode("utf-8")
        self._outgoing += struct.pack(">HH", width, height) + SERVER_FORMAT.pack()
        self._outgoing += struct.pack(">I", len(encoded)) + encoded
        self.state = State.NORMAL

    # -- states ---------------------------------------------------------------------------

    def _step(self) -> "Event | _Progress | None":
        if self.state is State.VERSION:
            return self._version()
        if self.state is State.SECURITY:
            return self._security_choice()
        if self.state is State.AUTHENTICATION:
            return self._authentication()
        if self.state is State.CLIENT_INIT:
            return self._client_init()
        if self.state is State.SERVER_INIT:
            return None  # waiting for the server; client bytes stay buffered
        return self._message()

    def _take(self, size: int) -> bytes | None:
        if len(self._buffer) < size:
            return None
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _version(self) -> "_Progress | None":
        data = self._take(VERSION_LENGTH)
        if data is None:
            return None
        match = _VERSION_PATTERN.fullmatch(data)
        if match is None or int(match[1]) != 3:
            raise ProtocolError(errno.EPROTO, f"unsupported protocol version {data!r}")
        minor = int(match[2])
        # RFC 6143 7.1.1: anything else a 3.x client claims is treated as 3.3.
        self.minor_version = minor if minor in {7, 8} else 3
        if self.minor_version == 3:
            self._outgoing += struct.pack(">I", self.security_type)
            self._after_security_choice()
        else:
            self._outgoing += bytes([1, self.security_type])
            self.state = State.SECURITY
        return _PROGRESS

    def _security_choice(self) -> "_Progress | None":
        data = self._take(1)
        if data is None:
            return None
        if data[0] != self.security_type:
            self._fail(f"security type {data[0]} was not offered")
        self._after_security_choice()
        return _PROGRESS

    def _after_security_choice(self) -> None:
        if self.security_type == SECURITY_VNC:
            self._outgoing += self.challenge
            self.state = State.AUTHENTICATION
            return
        if self.minor_version == 8:
            self._outgoing += struct.pack(">I", 0)
        self.state = State.CLIENT_INIT

    def _authentication(self) -> "_Progress | None":
        response = self._take(CHALLENGE_SIZE)
        if response is None:
            return None
        assert self.password is not None
        expected = des.vnc_response(self.password, self.challenge)
        if not hmac.compare_digest(response, expected):
            self._fail("authentication failed")
        self._outgoing += struct.pack(">I", 0)
        self.state = State.CLIENT_INIT
        return _PROGRESS

    def _fail(self, reason: str) -> None:
        """Tell the client security failed (as its version allows), then close."""
        self._outgoing += struct.pack(">I", 1)
        if self.minor_version == 8:
            encoded = reason.encode()
            self._outgoing += struct.pack(">I", len(encoded)) + encoded
        raise ProtocolError(errno.EACCES, reason)

    def _client_init(self) -> Event | None:
        data = self._take(1)
        if data is None:
            return None
        self.state = State.SERVER_INIT
        return ClientInit(shared=data[0] != 0)

    def _message(self) -> Event | None:
        if not self._buffer:
            return None
        kind = self._buffer[0]
        if kind == 0:
            data = self._take(4 + PIXEL_FORMAT_SIZE)
            if data is None:
                return None
            self.pixel_format = RfbPixelFormat.unpack(data[4:])
            return SetPixelFormat(self.pixel_format)
        if kind == 2:
            if len(self._buffer) < 4:
                return None
            (count,) = struct.unpack_from(">H", self._buffer, 2)
            data = self._take(4 + 4 * count)
            if data is None:
                return None
            return SetEncodings(struct.unpack_from(f">{count}i", data, 4))
        if kind == 3:
            data = self._take(10)
            if data is None:
                return None
            incremental, x, y, width, height = struct.unpack_from(">BHHHH", data, 1)
            return UpdateRequest(incremental != 0, Rect(x, y, width, height))
        if kind == 4:
            data = self._take(8)
            if data is None:
                return None
            down, keysym = struct.unpack_from(">B2xI", data, 1)
            return KeyEvent(down != 0, keysym)
        if kind == 5:
            data = self._take(6)
            if data is None:
                return None
            buttons, x, y = struct.unpack_from(">BHH", data, 1)
            return PointerEvent(buttons, x, y)
        if kind == 6:
            return self._cut_text()
        raise ProtocolError(errno.EPROTO, f"unknown client message type {kind}")

    def _cut_text(self) -> CutText | None:
        if len(self._buffer) < 8:
            return None
        (length,) = struct.unpack_from(">i", self._buffer, 4)
        # A negative length is the extended clipboard format; we never offered it, but
        # its payload is still abs(length) bytes, so skip it the same way.
        length = abs(length)
        if length > MAX_CUT_TEXT:
            raise ProtocolError(errno.EMSGSIZE, f"cut text of {length} bytes")
        data = self._take(8 + length)
        if data is None:
            return None
        return CutText(data[8:])

    def _close(self, reason: str) -> Closed:
        self.state = State.CLOSED
        return Closed(reason)


class _Progress:
    """A handshake step that consumed input without producing an event."""


_PROGRESS: Final = _Progress()


# -- server messages ----------------------------------------------------------------------


def update_header(rectangles: int) -> bytes:
    """FramebufferUpdate: message type 0, padding, rectangle count."""
    return struct.pack(">BxH", 0, rectangles)


def rect_header(area: Rect, encoding: int) -> bytes:
    return struct.pack(">HHHHi", area.x, area.y, area.width, area.height, encoding)


def copy_rect(area: Rect, source_x: int, source_y: int) -> bytes:
    return rect_header(area, ENCODING_COPYRECT) + struct.pack(">HH", source_x, source_y)


def desktop_size(width: int, height: int) -> bytes:
    return rect_header(Rect(0, 0, width, height), ENCODING_DESKTOP_SIZE)
