"""Sans-IO XenStore client core shared by the blocking and asyncio clients.

`Request` values say what to send and how to read the answer; `ClientProtocol`
numbers requests, frames the incoming byte stream, matches replies to requests by
`req_id` and routes XS_WATCH_EVENT messages, which may arrive between any two
replies, to one bounded queue per watch token. Nothing here touches a socket.
"""

import errno
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pvdisplay.store.permissions import Permission
from pvdisplay.wire import xs_wire
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.xs_wire import MessageType, Oversized, XsMessage

T = TypeVar("T")

DEFAULT_MAX_PENDING_EVENTS = 1024
REQ_ID_LIMIT = 1 << 32


class XenStoreError(OSError):
    """An XS_ERROR reply (or a request the client refuses to send), with `.errno`.

    Instances are created by `xenstore_error`, which picks a subclass that also
    derives from the matching built-in OSError subclass, so `except
    FileNotFoundError` catches ENOENT and `except PermissionError` catches EACCES.
    """


class XenStoreNotFoundError(XenStoreError, FileNotFoundError):
    pass


class XenStorePermissionError(XenStoreError, PermissionError):
    pass


class XenStoreExistsError(XenStoreError, FileExistsError):
    pass


class XenStoreIsADirectoryError(XenStoreError, IsADirectoryError):
    pass


class XenStoreBlockingIOError(XenStoreError, BlockingIOError):
    """EAGAIN: a transaction lost a race and must be retried."""


_ERROR_CLASSES: dict[int, type[XenStoreError]] = {
    errno.ENOENT: XenStoreNotFoundError,
    errno.EACCES: XenStorePermissionError,
    errno.EPERM: XenStorePermissionError,
    errno.EEXIST: XenStoreExistsError,
    errno.EISDIR: XenStoreIsADirectoryError,
    errno.EAGAIN: XenStoreBlockingIOError,
}


def xenstore_error(number: int, subject: str | None = None) -> XenStoreError:
    """The exception for errno `number`; `subject` (a path, usually) becomes `.filename`."""
    cls = _ERROR_CLASSES.get(number, XenStoreError)
    if subject is None:
        return cls(number, os.strerror(number))
    return cls(number, os.strerror(number), subject)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A fired watch: `path` changed (or is the watched path itself, first time).

    `overflowed` marks the event that replaces events dropped because the watch's
    queue was full: its path is the watched path, and the consumer should re-read
    everything it cares about below it.
    """

    path: str
    token: str
    overflowed: bool = False


@dataclass(frozen=True, slots=True)
class Request(Generic[T]):
    """One XenStore request and how to turn its reply into a result."""

    type: MessageType
    payload: bytes
    decode: Callable[[bytes], T]
    subject: str | None = None
    # Errors that are an answer rather than a failure, e.g. ENOENT for `exists`.
    error_results: Mapping[int, T] = field(default_factory=dict)

    def result(self, reply: XsMessage) -> T:
        """The decoded reply; raises XenStoreError for XS_ERROR, ProtocolError for garbage."""
        if reply.type == MessageType.ERROR:
            number = xs_wire.errno_from_error_payload(reply.payload)
            if number in self.error_results:
                return self.error_results[number]
            raise xenstore_error(number, self.subject)
        if reply.type != self.type:
            raise ProtocolError(errno.EIO, f"reply type {reply.type} to a {self.type.name} request")
        return self.decode(reply.payload)


def connection_error(path: str, failure: BaseException | None) -> ConnectionError:
    """What a call on a client that is closed (`failure` None) or whose connection broke raises."""
    if failure is None:
        return ConnectionError("xenstore client is closed")
    error = ConnectionError(f"xenstore connection to {path} failed")
    error.__cause__ = failure
    return error


def transaction_attempts(attempts: int) -> range:
    """The attempt numbers `transact` may make; at least one."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    return range(attempts)


def retries_transaction(error: BaseException, attempt: int, attempts: int) -> bool:
    """Whether `transact` reruns its body after `error` ended attempt number `attempt`.

    Only a lost race (EAGAIN) is retried, and only while attempts remain; the last
    EAGAIN XenStoreError (a BlockingIOError) propagates.
    """
    return (
        isinstance(error, XenStoreError) and error.errno == errno.EAGAIN and attempt < attempts - 1
    )


def _checked(*parts: str) -> list[str]:
    for part in parts:
        if "\0" in part:
            raise xenstore_error(errno.EINVAL, part)
    return list(parts)


def _strings(*parts: str) -> bytes:
    payload = xs_wire.join_strings(*_checked(*parts))
    if len(payload) > xs_wire.PAYLOAD_MAX:
        raise xenstore_error(errno.E2BIG, parts[0])
    return payload


def _decode_ok(payload: bytes) -> None:
    if payload != b"OK\0":
        raise ProtocolError(errno.EIO, f"expected OK, got {payload[:32]!r}")


def _decode_value(payload: bytes) -> bytes:
    return payload


def _decode_names(payload: bytes) -> list[str]:
    # Some daemons answer an empty directory with a lone NUL; no child is unnamed.
    return [name for name in xs_wire.split_strings(payload) if name]


def _decode_permissions(payload: bytes) -> list[Permission]:
    if not payload.endswith(b"\0"):
        raise ProtocolError(errno.EIO, f"permission list is not NUL-terminated: {payload[:32]!r}")
    return [Permission.parse(text) for text in payload[:-1].split(b"\0")]


def _decode_string(payload: bytes) -> str:
    strings = xs_wire.split_strings(payload)
    if len(strings) != 1:
        raise ProtocolError(errno.EIO, f"expected one string, got {payload[:32]!r}")
    return strings[0]


def _decode_tx_id(payload: bytes) -> int:
    text = _decode_string(payload)
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < REQ_ID_LIMIT:
        raise ProtocolError(errno.EIO, f"bad transaction id {text!r}")
    return int(text)


def _decode_flag(payload: bytes) -> bool:
    text = _decode_string(payload)
    if text not in ("T", "F"):
        raise ProtocolError(errno.EIO, f"expected T or F, got {text!r}")
    return text == "T"


def read(path: str) -> Request[bytes]:
    return Request(MessageType.READ, _strings(path), _decode_value, path)


def exists(path: str) -> Request[bool]:
    return Request(MessageType.READ, _strings(path), lambda _: True, path, {errno.ENOENT: False})


def write(path: str, value: bytes | str) -> Request[None]:
    data = value.encode() if isinstance(value, str) else value
    # The value is raw bytes after the path's NUL, with no terminator of its own.
    payload = xs_wire.join_strings(*_checked(path)) + data
    if len(payload) > xs_wire.PAYLOAD_MAX:
        raise xenstore_error(errno.E2BIG, path)
    return Request(MessageType.WRITE, payload, _decode_ok, path)


def mkdir(path: str) -> Request[None]:
    return Request(MessageType.MKDIR, _strings(path), _decode_ok, path)


def rm(path: str) -> Request[None]:
    return Request(MessageType.RM, _strings(path), _decode_ok, path)


def ls(path: str) -> Request[list[str]]:
    return Request(MessageType.DIRECTORY, _strings(path), _decode_names, path)


def get_permissions(path: str) -> Request[list[Permission]]:
    return Request(MessageType.GET_PERMS, _strings(path), _decode_permissions, path)


def set_permissions(path: str, permissions: Iterable[Permission]) -> Request[None]:
    entries = [str(permission) for permission in permissions]
    if not entries:
        raise xenstore_error(errno.EINVAL, path)
    return Request(MessageType.SET_PERMS, _strings(path, *entries), _decode_ok, path)


def watch(path: str, token: str) -> Request[None]:
    return Request(MessageType.WATCH, _strings(path, token), _decode_ok, path)


def unwatch(path: str, token: str) -> Request[None]:
    return Request(MessageType.UNWATCH, _strings(path, token), _decode_ok, path)


def transaction_start() -> Request[int]:
    return Request(MessageType.TRANSACTION_START, _strings(""), _decode_tx_id)


def transaction_end(commit: bool) -> Request[None]:
    return Request(MessageType.TRANSACTION_END, _strings("T" if commit else "F"), _decode_ok)


def introduce(domid: int, mfn: int, evtchn: int) -> Request[None]:
    return Request(MessageType.INTRODUCE, _strings(str(domid), str(mfn), str(evtchn)), _decode_ok)


def release(domid: int) -> Request[None]:
    return Request(MessageType.RELEASE, _strings(str(domid)), _decode_ok)


def get_domain_path(domid: int) -> Request[str]:
    return Request(MessageType.GET_DOMAIN_PATH, _strings(str(domid)), _decode_string)


def is_domain_introduced(domid: int) -> Request[bool]:
    return Request(MessageType.IS_DOMAIN_INTRODUCED, _strings(str(domid)), _decode_flag)


def set_target(domid: int, target: int) -> Request[None]:
    return Request(MessageType.SET_TARGET, _strings(str(domid), str(target)), _decode_ok)


@dataclass(frozen=True, slots=True)
class Arrivals:
    """What one `receive()` call completed: replies by req_id, tokens with new events."""

    replies: list[int]
    event_tokens: list[str]


class _WatchQueue:
    def __init__(self, path: str, token: str, limit: int) -> None:
        self.path = path
        self.token = token
        self.limit = limit
        self.events: deque[WatchEvent] = deque()

    def push(self, event: WatchEvent) -> None:
        if len(self.events) >= self.limit:
            # Watches say "look again", so one catch-all event is as good as the
            # dropped ones and keeps a slow consumer from growing memory.
            self.events.clear()
            self.events.append(WatchEvent(self.path, self.token, overflowed=True))
        self.events.append(event)


class ClientProtocol:
    """Request numbering, reply matching and watch routing for one connection.

    Replies are kept until `take_reply`; a caller that gives up on a request calls
    `abandon` so its reply is dropped instead of kept forever. Watch events are
    queued per token, at most `max_pending_events` per watch (see _WatchQueue).
    Any malformed input raises ProtocolError; the connection is then unusable.
    """

    def __init__(self, max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS) -> None:
        if max_pending_events < 1:
            raise ValueError("max_pending_events must be at least 1")
        self._max_pending_events = max_pending_events
        self._reader = xs_wire.MessageReader()
        self._next_req_id = 1
        self._awaiting: set[int] = set()
        self._abandoned: set[int] = set()
        self._replies: dict[int, XsMessage] = {}
        self._watches: dict[str, _WatchQueue] = {}
        self._tokens = itertools.count()

    def send(self, request: Request[T], tx_id: int = 0) -> tuple[int, bytes]:
        """Number `request`; returns its req_id and the bytes to write."""
        req_id = self._allocate_req_id()
        data = XsMessage(request.type, req_id, tx_id, request.payload).encode()
        self._awaiting.add(req_id)
        return req_id, data

    def _allocate_req_id(self) -> int:
        for _ in range(len(self._awaiting) + len(self._replies) + 1):
            req_id = self._next_req_id
            self._next_req_id = (req_id + 1) % REQ_ID_LIMIT
            if req_id not in self._awaiting and req_id not in self._replies:
                return req_id
        raise AssertionError("unreachable: more ids than requests in flight were tried")

    def receive(self, data: bytes) -> Arrivals:
        """Feed bytes from the daemon; returns which replies and events completed."""
        arrivals = Arrivals([], [])
        for item in self._reader.feed(data):
            if isinstance(item, Oversized):
                raise ProtocolError(errno.E2BIG, f"daemon sent {item.header.len} payload bytes")
            if item.type == MessageType.WATCH_EVENT:
                token = self._route_event(item.payload)
                if token is not None and token not in arrivals.event_tokens:
                    arrivals.event_tokens.append(token)
            elif item.req_id in self._awaiting:
                self._awaiting.remove(item.req_id)
                if item.req_id in self._abandoned:
                    self._abandoned.remove(item.req_id)
                else:
                    self._replies[item.req_id] = item
                    arrivals.replies.append(item.req_id)
            else:
                raise ProtocolError(errno.EIO, f"reply to unknown request id {item.req_id}")
        return arrivals

    def _route_event(self, payload: bytes) -> str | None:
        strings = xs_wire.split_strings(payload)
        if len(strings) < 2:
            raise ProtocolError(errno.EIO, f"watch event without a token: {payload[:64]!r}")
        path, token = strings[xs_wire.WATCH_PATH], strings[xs_wire.WATCH_TOKEN]
        queue = self._watches.get(token)
        if queue is None:
            # Events already in flight when the watch was removed.
            return None
        queue.push(WatchEvent(path, token))
        return token

    def take_reply(self, req_id: int) -> XsMessage | None:
        return self._replies.pop(req_id, None)

    def abandon(self, req_id: int) -> None:
        """Forget a request whose caller stopped waiting; its reply will be dropped."""
        if self._replies.pop(req_id, None) is None and req_id in self._awaiting:
            self._abandoned.add(req_id)

    def add_watch(self, path: str, token: str | None = None) -> str:
        """Start queueing events for `token` (made up if None); call before sending XS_WATCH.

        Registering first keeps the initial event even if a daemon sends it
        ahead of the WATCH reply. Returns the token.
        """
        chosen = token if token is not None else f"pvdisplay-{next(self._tokens)}"
        if chosen in self._watches:
            raise ValueError(f"watch token {chosen!r} is already in use on this connection")
        _checked(path, chosen)
        self._watches[chosen] = _WatchQueue(path, chosen, self._max_pending_events)
        return chosen

    def remove_watch(self, token: str) -> bool:
        """Stop queueing events for `token` and drop the ones not yet taken.

        Returns whether `token` was being watched.
        """
        return self._watches.pop(token, None) is not None

    def is_watching(self, token: str) -> bool:
        return token in self._watches

    def take_event(self, token: str) -> WatchEvent | None:
        queue = self._watches.get(token)
        if queue is None or not queue.events:
            return None
        return queue.events.popleft()
