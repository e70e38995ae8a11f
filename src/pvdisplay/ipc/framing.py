"""Messages between local processes (the broker's, the planes socket's): JSON objects
plus file descriptors, framed over SOCK_SEQPACKET records.

A message is one record when it is small, which is nearly always. A message whose body
exceeds `RECORD_BYTES`, or that carries more than `FDS_PER_RECORD` descriptors (the kernel
allows SCM_MAX_FD = 253 per sendmsg), continues in further records:

    first record:         u32 body_length, u32 fd_count, body[0:RECORD_BYTES]
    continuation record:  b"+", next slice of the body (possibly empty)

Each record carries up to FDS_PER_RECORD descriptors. Records are never empty, because
a zero-length SEQPACKET read is indistinguishable from end-of-file.

Lists of grant refs or page numbers, which run to thousands (a 1080p frame is 2025
pages), travel as base64 of little-endian uint32 arrays rather than JSON numbers:
that is an order of magnitude cheaper to encode, decode and validate.

Everything here is sans-IO: `encode` gives records to send and `Assembler` turns
received records back into messages. Peers are untrusted, so every violation raises
`ProtocolError` and the caller drops the connection.
"""

import array
import base64
import errno
import json
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pvdisplay.wire.errors import HypervisorError, ProtocolError

RECORD_BYTES = 64 * 1024
FDS_PER_RECORD = 250
MAX_BODY = 8 * 1024 * 1024
MAX_FDS = 70_000
RECV_BYTES = RECORD_BYTES + 64
if array.array("I").itemsize != 4:
    raise ImportError("array type 'I' is not 32 bits on this platform")
_HEADER = struct.Struct("<II")
_CONTINUATION = b"+"

JsonObject = dict[str, object]


@dataclass
class FramedMessage:
    body: JsonObject
    fds: list[int]


def encode(body: Mapping[str, object], fds: Sequence[int] = ()) -> list[tuple[bytes, list[int]]]:
    """Split one message into SEQPACKET records of (bytes, descriptors)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_BODY or len(fds) > MAX_FDS:
        raise ValueError(f"message too large: {len(data)} bytes, {len(fds)} fds")
    count = max(1, -(-len(data) // RECORD_BYTES), -(-len(fds) // FDS_PER_RECORD))
    records = []
    for index in range(count):
        chunk = data[index * RECORD_BYTES : (index + 1) * RECORD_BYTES]
        prefix = _HEADER.pack(len(data), len(fds)) if index == 0 else _CONTINUATION
        descriptors = list(fds[index * FDS_PER_RECORD : (index + 1) * FDS_PER_RECORD])
        records.append((prefix + chunk, descriptors))
    return records


@dataclass
class Assembler:
    """Reassemble records into messages; descriptors received so far stay in `fds`."""

    fds: list[int] = field(default_factory=list)
    max_fds: int = MAX_FDS
    """Descriptors one message may carry; a receiver holds them all until it is whole."""
    _body: bytearray = field(default_factory=bytearray)
    _expect: tuple[int, int] | None = None

    def feed(self, record: bytes, fds: Sequence[int]) -> FramedMessage | None:
        """Take one record; return the message it completes, if any.

        On ProtocolError the descriptors already received are left in `self.fds` for
        the caller to close.
        """
        self.fds.extend(fds)
        if self._expect is None:
            if len(record) < _HEADER.size:
                raise ProtocolError(errno.EPROTO, f"record of {len(record)} bytes has no header")
            length, fd_count = _HEADER.unpack_from(record)
            if length > MAX_BODY or fd_count > self.max_fds:
                raise ProtocolError(errno.EMSGSIZE, f"message of {length} bytes, {fd_count} fds")
            self._expect = (length, fd_count)
            chunk = record[_HEADER.size :]
        else:
            if record[:1] != _CONTINUATION:
                raise ProtocolError(errno.EPROTO, "continuation record without its marker")
            chunk = record[1:]
        length, fd_count = self._expect
        if len(chunk) > RECORD_BYTES or len(self._body) + len(chunk) > length:
            raise ProtocolError(errno.EPROTO, "record overruns the message body")
        if len(self.fds) > fd_count:
            raise ProtocolError(errno.EPROTO, "more descriptors than the header announced")
        self._body += chunk
        if len(self._body) < length or len(self.fds) < fd_count:
            return None
        message = FramedMessage(decode_body(bytes(self._body)), self.fds)
        self.fds = []
        self._body = bytearray()
        self._expect = None
        return message


def whole_body(record: bytes) -> JsonObject | None:
    """The body of `record` if it is a whole message by itself, else None."""
    if len(record) < _HEADER.size:
        return None
    length, _ = _HEADER.unpack_from(record)
    if len(record) - _HEADER.size != length:
        return None
    try:
        return decode_body(record[_HEADER.size :])
    except ProtocolError:
        return None


def decode_body(data: bytes) -> JsonObject:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(errno.EPROTO, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(errno.EPROTO, "body is not a JSON object")
    return body


def get_int(body: Mapping[str, object], name: str, maximum: int = 0xFFFFFFFF) -> int:
    value = body.get(name)
    if type(value) is not int or not 0 <= value <= maximum:
        raise ProtocolError(errno.EINVAL, f"{name} must be an integer in 0..{maximum}")
    return value


def get_bool(body: Mapping[str, object], name: str) -> bool:
    value = body.get(name)
    if type(value) is not bool:
        raise ProtocolError(errno.EINVAL, f"{name} must be a boolean")
    return value


def get_str(body: Mapping[str, object], name: str, max_length: int = 64) -> str:
    value = body.get(name)
    if not isinstance(value, str) or len(value) > max_length:
        raise ProtocolError(errno.EINVAL, f"{name} must be a string of at most {max_length}")
    return value


def pack_u32s(values: Sequence[int]) -> str:
    """Encode a list of uint32 (refs, pages) for a message body."""
    try:
        packed = array.array("I", values)
    except (OverflowError, TypeError):
        raise HypervisorError(errno.EINVAL, "refs and pages are 32-bit unsigned") from None
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def get_u32s(body: Mapping[str, object], name: str, max_items: int) -> list[int]:
    """A list packed by `pack_u32s`, of at most `max_items`."""
    value = body.get(name)
    if not isinstance(value, str) or len(value) > (max_items * 4 + 2) // 3 * 4:
        raise ProtocolError(errno.EINVAL, f"{name} must be packed uint32s, at most {max_items}")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise ProtocolError(errno.EINVAL, f"{name} is not base64") from None
    if len(raw) % 4:
        raise ProtocolError(errno.EINVAL, f"{name} is not a whole number of uint32s")
    unpacked = array.array("I")
    unpacked.frombytes(raw)
    if sys.byteorder == "big":
        unpacked.byteswap()
    return unpacked.tolist()


def get_triples(
    body: Mapping[str, object], name: str, max_items: int
) -> list[tuple[int, int, int]]:
    """A list of [a, b, c] non-negative integer triples (segment tables)."""
    value = body.get(name)
    if not isinstance(value, list) or len(value) > max_items:
        raise ProtocolError(errno.EINVAL, f"{name} must be a list of at most {max_items}")
    triples = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or any(type(x) is not int or not 0 <= x <= 0xFFFFFFFF for x in item)
        ):
            raise ProtocolError(errno.EINVAL, f"{name} holds {item!r}, not a triple")
        triples.append((item[0], item[1], item[2]))
    return triples
