"""Sans-IO xenstored: framed messages in, messages and socket actions out.

The I/O layer registers each accepted socket with `connect()`, naming the
domain the socket belongs to (never anything the client says), feeds every
framed `XsMessage` or `Oversized` header to `handle()`, and carries out the
returned outputs in order: `Send` a message, `Close` a connection,
open or remove a domain's socket after `DomainIntroduced` / `DomainReleased`.

Replies mirror xenstored: the reply type equals the request type, errors are
XS_ERROR with the errno's name, watch events caused by a request are queued
before its reply, and the event a new watch fires at once comes after it.
"""

import errno
import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from pvdisplay import logs
from pvdisplay.store import tree
from pvdisplay.store.permissions import DOMID_MAX, Caller, Permission, encode
from pvdisplay.store.tree import Change, Quotas, Store, StoreError, Transaction, View
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.xs_wire import PAYLOAD_MAX, MessageType, Oversized, XsMessage, error_payload

log = logging.getLogger(__name__)

DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
_TRANSACTION_ID_LIMIT = 1 << 32
_OK = b"OK\0"

# xenstored's XS_FLAG_PRIV requests, refused to guests with EACCES.
_PRIVILEGED = frozenset(
    {
        MessageType.CONTROL,
        MessageType.INTRODUCE,
        MessageType.RELEASE,
        MessageType.IS_DOMAIN_INTRODUCED,
        MessageType.RESUME,
        MessageType.SET_TARGET,
    }
)
# What the read-only socket may not do beyond node writes (which its masked
# write permission already refuses): xenstored answered these with EACCES too.
_CHANGES_DOMAINS = frozenset(
    {
        MessageType.CONTROL,
        MessageType.INTRODUCE,
        MessageType.RELEASE,
        MessageType.RESUME,
        MessageType.SET_TARGET,
    }
)
_IGNORES_TRANSACTION = frozenset({MessageType.WATCH, MessageType.UNWATCH})


@dataclass(frozen=True, slots=True)
class Watch:
    path: str
    token: bytes
    # Characters cut from event paths, so a relative watch hears relative paths.
    strip: int

    def event(self, path: str) -> XsMessage:
        return XsMessage(
            MessageType.WATCH_EVENT, 0, 0, path[self.strip :].encode() + b"\0" + self.token + b"\0"
        )


class Connection:
    """One client connection as the engine sees it; the I/O layer's handle for it."""

    def __init__(self, domid: int, read_only: bool, serial: int) -> None:
        self.domid = domid
        self.read_only = read_only
        self.serial = serial
        self.transactions: dict[int, Transaction] = {}
        self.watches: dict[tuple[str, bytes], Watch] = {}
        self._next_transaction_id = 1

    def allocate_transaction_id(self) -> int:
        while True:
            candidate = self._next_transaction_id
            self._next_transaction_id = (candidate + 1) % _TRANSACTION_ID_LIMIT
            if candidate and candidate not in self.transactions:
                return candidate

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"Connection(#{self.serial} dom{self.domid} {mode})"


@dataclass(frozen=True, slots=True)
class Send:
    connection: Connection
    message: XsMessage

    @property
    def is_event(self) -> bool:
        return self.message.type == MessageType.WATCH_EVENT


@dataclass(frozen=True, slots=True)
class Close:
    connection: Connection


@dataclass(frozen=True, slots=True)
class DomainIntroduced:
    domid: int


@dataclass(frozen=True, slots=True)
class DomainReleased:
    domid: int


Output = Send | Close | DomainIntroduced | DomainReleased


@dataclass(slots=True)
class _Domain:
    domid: int
    target: int | None = None


@dataclass(slots=True)
class _Request:
    connection: Connection
    caller: Caller
    message: XsMessage
    transaction: Transaction | None
    view: View
    before: list[Output]
    after: list[Output]


def _strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings; bytes after the last NUL are ignored, as get_strings()."""
    return payload.split(b"\0")[:-1]


def _one_arg(payload: bytes) -> bytes:
    """xenstored's onearg(): exactly one string and nothing after it."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise StoreError(errno.EINVAL, "expected exactly one NUL-terminated string")
    return payload[:-1]


def _number(raw: bytes, limit: int, what: str) -> int:
    if not raw.isdigit() or len(raw) > 10 or int(raw) > limit:
        raise StoreError(errno.EINVAL, f"bad {what} {raw[:16]!r}")
    return int(raw)


def _domid(raw: bytes) -> int:
    return _number(raw, DOMID_MAX, "domid")


def _error(message: XsMessage | Oversized, number: int) -> XsMessage:
    header = message.header if isinstance(message, Oversized) else message
    return XsMessage(MessageType.ERROR, header.req_id, header.tx_id, error_payload(number))


class Engine:
    """The whole daemon state: tree, domains, connections, watches, transactions."""

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.quotas = quotas or Quotas()
        self.store = Store()
        self.trace_requests = False
        self._domains: dict[int, _Domain] = {}
        self._connections: dict[Connection, None] = {}
        self._serials = itertools.count(1)
        self._handlers: dict[int, Callable[[_Request], bytes]] = {
            MessageType.CONTROL: self._control,
            MessageType.DIRECTORY: self._directory,
            MessageType.READ: self._read,
            MessageType.GET_PERMS: self._get_permissions,
            MessageType.WATCH: self._watch,
            MessageType.UNWATCH: self._unwatch,
            MessageType.TRANSACTION_START: self._transaction_start,
            MessageType.TRANSACTION_END: self._transaction_end,
            MessageType.INTRODUCE: self._introduce,
            MessageType.RELEASE: self._release,
            MessageType.GET_DOMAIN_PATH: self._get_domain_path,
            MessageType.WRITE: self._write,
            MessageType.MKDIR: self._mkdir,
            MessageType.RM: self._rm,
            MessageType.SET_PERMS: self._set_permissions,
            MessageType.IS_DOMAIN_INTRODUCED: self._is_domain_introduced,
            MessageType.RESUME: self._resume,
            MessageType.SET_TARGET: self._set_target,
            MessageType.RESET_WATCHES: self._reset_watches,
            MessageType.DIRECTORY_PART: self._directory_part,
        }

    # -- connections -------------------------------------------------------

    def connect(self, domid: int, *, read_only: bool = False) -> Connection:
        """Register a socket; guests need INTRODUCE first and stay within `connections`."""
        if domid != 0 and domid not in self._domains:
            raise StoreError(errno.ENOENT, f"domain {domid} is not introduced")
        connection = Connection(domid, read_only, next(self._serials))
        sharing = self._sharing_quotas(connection)
        if sharing is not None and len(sharing) >= self.quotas.connections:
            who = "the read-only socket" if read_only else f"domain {domid}"
            raise StoreError(errno.EBUSY, f"{who} has too many connections")
        self._connections[connection] = None
        return connection

    def disconnect(self, connection: Connection) -> None:
        """Forget a closed connection with its watches and transactions."""
        self._connections.pop(connection, None)
        connection.watches.clear()
        connection.transactions.clear()

    def _connections_of(self, domid: int) -> list[Connection]:
        return [connection for connection in self._connections if connection.domid == domid]

    def _sharing_quotas(self, connection: Connection) -> list[Connection] | None:
        """The registered connections counted with `connection` against one set of
        quotas, or None for dom0's read-write socket, which has none.

        The read-only socket is open to a group, not only to root, and reads are
        all it is privileged for: its connections together get one guest's
        connection, watch and transaction quotas, so its users cannot grow the
        daemon without bound.
        """
        if connection.domid == 0 and not connection.read_only:
            return None
        return [
            other
            for other in self._connections
            if other.domid == connection.domid and other.read_only == connection.read_only
        ]

    def _caller(self, connection: Connection) -> Caller:
        domain = self._domains.get(connection.domid)
        target = domain.target if domain else None
        return Caller(connection.domid, target, connection.read_only)

    # -- requests ----------------------------------------------------------

    def handle(self, connection: Connection, message: XsMessage | Oversized) -> list[Output]:
        if connection not in self._connections:
            return []
        if isinstance(message, Oversized):
            return [Send(connection, _error(message, errno.E2BIG))]
        try:
            outputs = self._dispatch(connection, message)
        except (StoreError, ProtocolError) as error:
            outputs = [Send(connection, _error(message, error.errno))]
        if self.trace_requests:
            reply = next(o for o in outputs if isinstance(o, Send) and o.connection is connection)
            log.info(
                "request",
                extra=logs.fields(
                    conn=connection.serial,
                    domid=connection.domid,
                    type=message.type,
                    req_id=message.req_id,
                    tx_id=message.tx_id,
                    reply=reply.message.payload[:64],
                ),
            )
        return outputs

    def _dispatch(self, connection: Connection, message: XsMessage) -> list[Output]:
        handler = self._handlers.get(message.type)
        if handler is None:
            raise StoreError(errno.ENOSYS, f"unknown message type {message.type}")
        if message.type in _PRIVILEGED and connection.domid != 0:
            raise StoreError(errno.EACCES, "privileged request")
        if message.type in _CHANGES_DOMAINS and connection.read_only:
            raise StoreError(errno.EACCES, "read-only connection")
        transaction = None
        if message.tx_id and message.type not in _IGNORES_TRANSACTION:
            transaction = connection.transactions.get(message.tx_id)
            if transaction is None:
                raise StoreError(errno.ENOENT, f"no transaction {message.tx_id}")
        request = _Request(
            connection,
            self._caller(connection),
            message,
            transaction,
            transaction if transaction is not None else self.store,
            [],
            [],
        )
        payload = handler(request)
        if len(payload) > PAYLOAD_MAX:
            raise StoreError(errno.E2BIG, "reply over the payload maximum")
        reply = XsMessage(message.type, message.req_id, message.tx_id, payload)
        return [*request.before, Send(connection, reply), *request.after]

    def _path(self, request: _Request, raw: bytes, *, special: bool = False) -> str:
        caller = request.caller
        return tree.canonical_path(
            raw,
            caller.domid,
            special=special,
            path_max=None if caller.privileged else self.quotas.path_max,
        )

    def _changed(self, request: _Request, changes: list[Change]) -> None:
        if request.transaction is not None:
            request.transaction.record(changes)
        else:
            request.before += self._events(changes)

    def _events(self, changes: list[Change]) -> list[Output]:
        events: list[Output] = []
        for change in changes:
            for connection in self._connections:
                if not connection.watches or not change.visible_to(self._caller(connection)):
                    continue
                for watch in connection.watches.values():
                    if change.fires(watch.path):
                        event = watch.event(change.path)
                        # xenstored drops events too long to send.
                        if len(event.payload) <= PAYLOAD_MAX:
                            events.append(Send(connection, event))
        return events

    # -- nodes -------------------------------------------------------------

    def _read(self, request: _Request) -> bytes:
        path = self._path(request, _one_arg(request.message.payload))
        return tree.read(request.view, request.caller, path)

    def _write(self, request: _Request) -> bytes:
        payload = request.message.payload
        end = payload.find(b"\0")
        if end < 0:
            raise StoreError(errno.EINVAL, "WRITE without a NUL after the path")
        path = self._path(request, payload[:end])
        value = payload[end + 1 :]
        self._changed(request, tree.write(request.view, request.caller, path, value, self.quotas))
        return _OK

    def _mkdir(self, request: _Request) -> bytes:
        path = self._path(request, _one_arg(request.message.payload))
        self._changed(request, tree.mkdir(request.view, request.caller, path, self.quotas))
        return _OK

    def _rm(self, request: _Request) -> bytes:
        path = self._path(request, _one_arg(request.message.payload))
        self._changed(request, tree.rm(request.view, request.caller, path))
        return _OK

    def _directory(self, request: _Request) -> bytes:
        path = self._path(request, _one_arg(request.message.payload))
        return tree.directory(request.view, request.caller, path).encoded_children()

    def _directory_part(self, request: _Request) -> bytes:
        """Children from a byte offset, prefixed by the node's generation (xs_directory_part)."""
        if request.message.payload.count(b"\0") != 2:
            raise StoreError(errno.EINVAL, "DIRECTORY_PART needs a path and an offset")
        strings = _strings(request.message.payload)
        path = self._path(request, strings[0])
        offset = _number(strings[1], _TRANSACTION_ID_LIMIT - 1, "offset")
        node = tree.directory(request.view, request.caller, path)
        children = node.encoded_children()
        generation = str(node.generation).encode() + b"\0"
        if offset >= len(children):
            return generation + b"\0"
        room = PAYLOAD_MAX - len(generation) - 1
        end = offset
        while True:
            name_end = children.index(b"\0", end)
            if (end - offset) + (name_end - end) >= room:
                break
            end = name_end + 1
            if end == len(children):
                return generation + children[offset:end] + b"\0"
        return generation + children[offset:end]

    def _get_permissions(self, request: _Request) -> bytes:
        path = self._path(request, _one_arg(request.message.payload), special=True)
        return encode(tree.get_permissions(request.view, request.caller, path))

    def _set_permissions(self, request: _Request) -> bytes:
        strings = _strings(request.message.payload)
        if len(strings) < 2:
            raise StoreError(errno.EINVAL, "SET_PERMS needs a path and permissions")
        path = self._path(request, strings[0], special=True)
        permissions = tuple(Permission.parse(text) for text in strings[1:])
        changes = tree.set_permissions(request.view, request.caller, path, permissions, self.quotas)
        self._changed(request, changes)
        return _OK

    # -- watches -----------------------------------------------------------

    def _watch_arguments(self, request: _Request) -> tuple[str, bytes, int]:
        payload = request.message.payload
        strings = _strings(payload)
        if len(strings) != 2:
            raise StoreError(errno.EINVAL, "WATCH needs a path and a token")
        raw, token = strings
        path = self._path(request, raw, special=True)
        relative = not raw.startswith((b"/", b"@"))
        strip = len(tree.domain_home(request.connection.domid)) + 1 if relative else 0
        return path, token, strip

    def _watch(self, request: _Request) -> bytes:
        path, token, strip = self._watch_arguments(request)
        connection = request.connection
        if (path, token) in connection.watches:
            raise StoreError(errno.EEXIST, "watch already set")
        sharing = self._sharing_quotas(connection)
        if sharing is not None and sum(len(c.watches) for c in sharing) >= self.quotas.watches:
            raise StoreError(errno.E2BIG, "watches quota reached")
        watch = Watch(path, token, strip)
        connection.watches[path, token] = watch
        request.after.append(Send(connection, watch.event(path)))
        return _OK

    def _unwatch(self, request: _Request) -> bytes:
        path, token, _ = self._watch_arguments(request)
        if request.connection.watches.pop((path, token), None) is None:
            raise StoreError(errno.ENOENT, "no such watch")
        return _OK

    def _reset_watches(self, request: _Request) -> bytes:
        request.connection.watches.clear()
        request.connection.transactions.clear()
        return _OK

    # -- transactions ------------------------------------------------------

    def _transaction_start(self, request: _Request) -> bytes:
        if request.transaction is not None:
            raise StoreError(errno.EBUSY, "transactions do not nest")
        connection = request.connection
        sharing = self._sharing_quotas(connection)
        node_limit = None
        if sharing is not None:
            if sum(len(c.transactions) for c in sharing) >= self.quotas.transactions:
                raise StoreError(errno.ENOSPC, "transactions quota reached")
            node_limit = self.quotas.transaction_nodes
        transaction_id = connection.allocate_transaction_id()
        connection.transactions[transaction_id] = Transaction(self.store, node_limit)
        return f"{transaction_id}\0".encode()

    def _transaction_end(self, request: _Request) -> bytes:
        verdict = _one_arg(request.message.payload)
        if verdict not in (b"T", b"F"):
            raise StoreError(errno.EINVAL, "TRANSACTION_END takes T or F")
        transaction = request.transaction
        if transaction is None:
            raise StoreError(errno.ENOENT, "no transaction to end")
        del request.connection.transactions[request.message.tx_id]
        if verdict == b"T":
            changes = transaction.commit(request.caller, self.quotas)
            request.before += self._events(changes)
        return _OK

    # -- domains -----------------------------------------------------------

    def _introduce(self, request: _Request) -> bytes:
        strings = _strings(request.message.payload)
        if len(strings) < 3:
            raise StoreError(errno.EINVAL, "INTRODUCE needs domid, mfn and event channel")
        domid = _domid(strings[0])
        if not 0 < domid < DOMID_FIRST_RESERVED:
            raise StoreError(errno.EINVAL, f"domain {domid} cannot be introduced")
        if _number(strings[2], _TRANSACTION_ID_LIMIT - 1, "event channel") == 0:
            raise StoreError(errno.EINVAL, "event channel 0")
        if domid in self._domains:
            return _OK
        self._domains[domid] = _Domain(domid)
        log.info("domain introduced", extra=logs.fields(domid=domid))
        changes = tree.create_domain_home(self.store, domid)
        changes.append(tree.special_change(self.store, tree.INTRODUCE_DOMAIN))
        request.before += [DomainIntroduced(domid), *self._events(changes)]
        return _OK

    def _introduced_domain(self, raw: bytes) -> int:
        domid = _domid(raw)
        if domid == 0:
            raise StoreError(errno.EINVAL, "domain 0 is always there")
        if domid not in self._domains:
            raise StoreError(errno.ENOENT, f"domain {domid} is not introduced")
        return domid

    def _release(self, request: _Request) -> bytes:
        domid = self._introduced_domain(_one_arg(request.message.payload))
        closed: list[Output] = []
        for connection in self._connections_of(domid):
            self.disconnect(connection)
            closed.append(Close(connection))
        del self._domains[domid]
        for domain in self._domains.values():
            if domain.target == domid:
                domain.target = None
        log.info("domain released", extra=logs.fields(domid=domid, connections=len(closed)))
        changes = tree.release_domain(self.store, domid)
        changes.append(tree.special_change(self.store, tree.RELEASE_DOMAIN))
        request.before += [*closed, *self._events(changes), DomainReleased(domid)]
        return _OK

    def _resume(self, request: _Request) -> bytes:
        self._introduced_domain(_one_arg(request.message.payload))
        return _OK

    def _set_target(self, request: _Request) -> bytes:
        strings = _strings(request.message.payload)
        if len(strings) < 2:
            raise StoreError(errno.EINVAL, "SET_TARGET needs two domids")
        controller = self._introduced_domain(strings[0])
        target = self._introduced_domain(strings[1])
        self._domains[controller].target = target
        log.info("target set", extra=logs.fields(domid=controller, target=target))
        return _OK

    def _is_domain_introduced(self, request: _Request) -> bytes:
        domid = _domid(_one_arg(request.message.payload))
        introduced = domid in (0, DOMID_SELF) or domid in self._domains
        return b"T\0" if introduced else b"F\0"

    def _get_domain_path(self, request: _Request) -> bytes:
        domid = _domid(_one_arg(request.message.payload))
        return tree.domain_home(domid).encode() + b"\0"

    # -- control -----------------------------------------------------------

    def _control(self, request: _Request) -> bytes:
        strings = _strings(request.message.payload)
        if not strings:
            raise StoreError(errno.EINVAL, "CONTROL needs a command")
        command, *parameters = strings
        if command == b"print" and len(parameters) == 1:
            log.info(
                "control print", extra=logs.fields(text=parameters[0].decode(errors="replace"))
            )
            return _OK
        if command == b"log" and not parameters:
            state = "on" if self.trace_requests else "off"
            return f"Log switch settings:\nrequests: {state}\n\0".encode()
        if command == b"log" and parameters in ([b"on"], [b"off"]):
            self.trace_requests = parameters == [b"on"]
            return _OK
        if command == b"quota" and not parameters:
            return self._quota_settings()
        if command == b"quota" and len(parameters) == 1:
            return self._quota_usage(self._introduced_domain(parameters[0]))
        if command == b"help" and not parameters:
            return (
                b"print           <string>\n"
                b"log             [on|off]\n"
                b"quota           [<domid>]\n"
                b"help\n\0"
            )
        raise StoreError(errno.EINVAL, "unknown control command")

    def _quota_settings(self) -> bytes:
        lines = "".join(f"{name:<17}: {value:8d}\n" for name, value in asdict(self.quotas).items())
        return f"Quota settings:\n{lines}\0".encode()

    def _quota_usage(self, domid: int) -> bytes:
        connections = self._connections_of(domid)
        usage = {
            "nodes": self.store.owned(domid),
            "watches": sum(len(c.watches) for c in connections),
            "transactions": sum(len(c.transactions) for c in connections),
            "connections": len(connections),
        }
        lines = "".join(f"{name:<17}: {value:8d}\n" for name, value in usage.items())
        return f"Domain {domid}:\n{lines}\0".encode()
