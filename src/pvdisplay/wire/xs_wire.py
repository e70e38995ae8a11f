"""XenStore wire protocol (xen/io/xs_wire.h): header, message types, errors, limits.

A message is a 16-byte `xsd_sockmsg` header in host byte order followed by `len`
payload bytes, usually NUL-terminated strings. `MessageReader` frames a byte
stream into messages without doing any I/O itself.
"""

import enum
import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pvdisplay.wire.errors import ProtocolError


class MessageType(enum.IntEnum):
    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed from Xen; it must stay unknown.
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


TYPE_COUNT = 23
INVALID_TYPE = 0xFFFF

# XS_DEBUG is an alias kept by the header for old tools.
DEBUG = MessageType.CONTROL

WRITE_NONE = "NONE"
WRITE_CREATE = "CREATE"
WRITE_CREATE_EXCL = "CREATE|EXCL"

WATCH_PATH = 0
WATCH_TOKEN = 1

PAYLOAD_MAX = 4096
ABS_PATH_MAX = 3072
REL_PATH_MAX = 2048

# The order is the header's xsd_errors[] order; clients map strings, not indices,
# but keeping the order makes the table checkable against the compiled array.
ERRORS: tuple[tuple[str, int], ...] = (
    ("EINVAL", errno.EINVAL),
    ("EACCES", errno.EACCES),
    ("EEXIST", errno.EEXIST),
    ("EISDIR", errno.EISDIR),
    ("ENOENT", errno.ENOENT),
    ("ENOMEM", errno.ENOMEM),
    ("ENOSPC", errno.ENOSPC),
    ("EIO", errno.EIO),
    ("ENOTEMPTY", errno.ENOTEMPTY),
    ("ENOSYS", errno.ENOSYS),
    ("EROFS", errno.EROFS),
    ("EBUSY", errno.EBUSY),
    ("EAGAIN", errno.EAGAIN),
    ("EISCONN", errno.EISCONN),
    ("E2BIG", errno.E2BIG),
    ("EPERM", errno.EPERM),
)
_ERRNO_BY_NAME = dict(ERRORS)
_NAME_BY_ERRNO = {number: name for name, number in ERRORS}

HEADER = struct.Struct("=IIII")


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    req_id: int
    tx_id: int
    len: int

    def encode(self) -> bytes:
        return HEADER.pack(self.type, self.req_id, self.tx_id, self.len)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> "Header":
        if len(data) != HEADER.size:
            raise ProtocolError(errno.EINVAL, f"xenstore header is {len(data)} bytes, not 16")
        return cls(*HEADER.unpack(data))


@dataclass(frozen=True, slots=True)
class XsMessage:
    """A framed message; `type` stays an int so unknown types survive framing."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        if len(self.payload) > PAYLOAD_MAX:
            raise ProtocolError(errno.E2BIG, f"payload of {len(self.payload)} bytes over 4096")
        return Header(self.type, self.req_id, self.tx_id, len(self.payload)).encode() + (
            self.payload
        )


@dataclass(frozen=True, slots=True)
class Oversized:
    """A header whose `len` exceeds PAYLOAD_MAX; its payload is discarded unread."""

    header: Header


def error_payload(number: int) -> bytes:
    """The XS_ERROR payload for an errno; unknown errnos become EINVAL as xenstored does."""
    return _NAME_BY_ERRNO.get(number, "EINVAL").encode() + b"\0"


def errno_from_error_payload(payload: bytes) -> int:
    name = payload.rstrip(b"\0").decode("ascii", "replace")
    try:
        return _ERRNO_BY_NAME[name]
    except KeyError:
        raise ProtocolError(errno.EINVAL, f"unknown xenstore error string {name!r}") from None


def join_strings(*parts: str | bytes, terminate: bool = True) -> bytes:
    """NUL-join parts; XS_WRITE's value is the one payload that is not NUL-terminated."""
    encoded = [part.encode() if isinstance(part, str) else part for part in parts]
    return b"\0".join(encoded) + (b"\0" if terminate else b"")


def split_strings(payload: bytes) -> list[str]:
    """Split a NUL-terminated string list, as DIRECTORY and WATCH_EVENT carry."""
    if not payload:
        return []
    if not payload.endswith(b"\0"):
        raise ProtocolError(errno.EINVAL, "string list is not NUL-terminated")
    try:
        return payload[:-1].decode("utf-8").split("\0")
    except UnicodeDecodeError:
        raise ProtocolError(errno.EINVAL, "string list is not UTF-8") from None


class MessageReader:
    """Incremental framer: `feed()` bytes as they arrive, iterate complete messages.

    Memory stays bounded by one header plus PAYLOAD_MAX: an oversized payload is
    counted down and dropped as it streams in, never buffered.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discard = 0

    def feed(self, data: bytes) -> Iterator[XsMessage | Oversized]:
        self._buffer += data
        while True:
            if self._discard:
                dropped = min(self._discard, len(self._buffer))
                del self._buffer[:dropped]
                self._discard -= dropped
                if self._discard:
                    return
            if len(self._buffer) < HEADER.size:
                return
            header = Header.decode(bytes(self._buffer[: HEADER.size]))
            if header.len > PAYLOAD_MAX:
                del self._buffer[: HEADER.size]
                self._discard = header.len
                yield Oversized(header)
                continue
            end = HEADER.size + header.len
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            yield XsMessage(header.type, header.req_id, header.tx_id, payload)

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buffer)
