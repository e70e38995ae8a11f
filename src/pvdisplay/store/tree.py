"""The XenStore tree as a pure model: paths, nodes, transactions, and the operations on them.

Nodes live in a flat map from canonical path to an immutable `Node`, as
xenstored keeps them in one hashtable; each parent lists its children by name.
Every write stamps the node with a fresh, store-wide generation number.

A `Transaction` is a copy-on-access overlay over the `Store`, following
xenstored's conflict rule: the first time a transaction touches a path it
records that path's generation (0 when absent), and its commit fails with
EAGAIN if any recorded path has a different generation by then. The operations
are written once against `View`, which both the store and a transaction satisfy.

Operations check permissions and quotas before they change anything, so a
refused operation leaves the view exactly as it was.
"""

import errno
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Final, Protocol

from pvdisplay.store.permissions import (
    DOM0_ONLY,
    Access,
    Caller,
    Permission,
    Permissions,
    with_owner,
    without_domain,
)
from pvdisplay.wire import xs_wire

NO_GENERATION = 0
INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL_NODES = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)

# xenstored's struct node_hdr (16 bytes) and struct xs_permissions (8 bytes):
# the node-size quota counts them, so a node that fits there fits here.
_NODE_HEADER_SIZE = 16
_PERMISSION_SIZE = 8

_PATH_CHARACTERS = re.compile(rb"[A-Za-z0-9\-/_@]*")
_DOMAIN_HOME = re.compile(r"/local/domain/\d{1,5}/")


class StoreError(Exception):
    """A request xenstored would refuse; `errno` picks the XS_ERROR string."""

    def __init__(self, number: int, message: str = "") -> None:
        super().__init__(f"{errno.errorcode.get(number, number)}: {message}")
        self.errno = number


QUOTA_MAX: Final = 999_999_999
"""The largest quota: far above any useful limit, and what `pvdisplay xenstored --quota`
takes in 9 digits."""


@dataclass(frozen=True, slots=True)
class Quotas:
    """Limits for unprivileged domains and, together, the read-only socket's
    connections; defaults are xenstored's (domain.c hard_quotas).

    `outstanding` and `event_backlog` bound every connection's unsent output;
    `connections` bounds how many sockets one guest may open.
    """

    nodes: int = 1000
    node_size: int = 2048
    path_max: int = xs_wire.REL_PATH_MAX
    node_permissions: int = 5
    watches: int = 128
    transactions: int = 10
    transaction_nodes: int = 1024
    outstanding: int = 20
    event_backlog: int = 1024
    connections: int = 8

    def __post_init__(self) -> None:
        for field in fields(self):
            if not 1 <= getattr(self, field.name) <= QUOTA_MAX:
                raise ValueError(f"quota {field.name} must be from 1 to {QUOTA_MAX}")
        if self.path_max > xs_wire.REL_PATH_MAX:
            raise ValueError(f"quota path_max must be at most {xs_wire.REL_PATH_MAX}")


@dataclass(frozen=True, slots=True)
class Node:
    value: bytes
    permissions: Permissions
    children: tuple[str, ...]
    generation: int

    @property
    def owner(self) -> int:
        return self.permissions[0].domid

    def encoded_children(self) -> bytes:
        """The DIRECTORY reply: every child name NUL-terminated."""
        return b"".join(name.encode() + b"\0" for name in self.children)


def node_size(value: bytes, permissions: Permissions, children: tuple[str, ...]) -> int:
    """What xenstored's node-size quota measures."""
    return (
        _NODE_HEADER_SIZE
        + _PERMISSION_SIZE * len(permissions)
        + len(value)
        + sum(len(name) + 1 for name in children)
    )


# -- paths -----------------------------------------------------------------


def canonical_path(
    raw: bytes, domid: int, *, special: bool = False, path_max: int | None = None
) -> str:
    """Validate a path from the wire and make it absolute, as xenstored's canonicalize().

    Relative paths are relative to /local/domain/<domid>. `@` paths are allowed
    only where `special` is set. `path_max` (unprivileged callers) limits the
    length after any /local/domain/<N>/ prefix. Every violation is EINVAL.
    """
    if not _PATH_CHARACTERS.fullmatch(raw):
        raise StoreError(errno.EINVAL, f"bad characters in path {raw[:64]!r}")
    text = raw.decode("ascii")
    if text.startswith("@"):
        if not special:
            raise StoreError(errno.EINVAL, "special path not allowed here")
        path = text
    elif text.startswith("/"):
        path = text
    else:
        path = f"/local/domain/{domid}/{text}"
    if (path.endswith("/") and path != "/") or "//" in path:
        raise StoreError(errno.EINVAL, f"malformed path {path[:64]!r}")
    if len(path) > xs_wire.ABS_PATH_MAX:
        raise StoreError(errno.EINVAL, f"path of {len(path)} bytes")
    if path_max is not None:
        home = _DOMAIN_HOME.match(path)
        if len(path) - (home.end() if home else 0) > path_max:
            raise StoreError(errno.EINVAL, f"path over the {path_max}-byte quota")
    return path


def parent_of(path: str) -> str:
    slash = path.rfind("/", 1)
    return path[:slash] if slash > 0 else "/"


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def child_path(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def is_at_or_below(path: str, ancestor: str) -> bool:
    if ancestor == "/":
        return path.startswith("/")
    return path == ancestor or path.startswith(ancestor + "/")


# -- views -----------------------------------------------------------------


class View(Protocol):
    """Where operations read and write nodes: the live store or a transaction."""

    def get(self, path: str) -> Node | None: ...

    def put(
        self, path: str, value: bytes, permissions: Permissions, children: tuple[str, ...]
    ) -> None: ...

    def delete(self, path: str) -> None: ...

    def owned(self, domid: int) -> int:
        """How many nodes `domid` owns, the quantity the nodes quota limits."""
        ...


class Store:
    """The live tree, with xenstored's initial nodes."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._owned: Counter[int] = Counter()
        self._generation = NO_GENERATION
        self.put("/", b"", DOM0_ONLY, ("tool",))
        self.put("/tool", b"", DOM0_ONLY, ("xenstored",))
        self.put("/tool/xenstored", b"", DOM0_ONLY, ())
        for special in SPECIAL_NODES:
            self.put(special, b"", DOM0_ONLY, ())

    def next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def get(self, path: str) -> Node | None:
        return self._nodes.get(path)

    def put(
        self, path: str, value: bytes, permissions: Permissions, children: tuple[str, ...]
    ) -> None:
        old = self._nodes.get(path)
        if old is not None:
            self._owned[old.owner] -= 1
        node = Node(value, permissions, children, self.next_generation())
        self._nodes[path] = node
        self._owned[node.owner] += 1

    def delete(self, path: str) -> None:
        node = self._nodes.pop(path)
        self._owned[node.owner] -= 1

    def owned(self, domid: int) -> int:
        return self._owned[domid]

    def paths(self) -> Iterator[str]:
        return iter(list(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)


@dataclass(frozen=True, slots=True)
class Change:
    """A modification that watches may hear about.

    `exact` marks a node removed together with an ancestor: only watches on
    exactly that path fire. `readable` are the permission lists under which a
    watcher may learn of it (the node's new and old lists and its parent's),
    as xenstored's watch_permitted() checks.
    """

    path: str
    exact: bool
    readable: tuple[Permissions, ...]

    def fires(self, watch_path: str) -> bool:
        if self.exact:
            return self.path == watch_path
        return is_at_or_below(self.path, watch_path)

    def visible_to(self, caller: Caller) -> bool:
        return any(caller.access(permissions) & Access.READ for permissions in self.readable)


class Transaction:
    """A copy-on-access overlay over the store; see the module docstring for conflicts.

    `node_limit` (unprivileged callers) bounds how many paths it may touch.
    """

    def __init__(self, store: Store, node_limit: int | None = None) -> None:
        self._store = store
        self._node_limit = node_limit
        self._copies: dict[str, Node | None] = {}
        self._observed: dict[str, int] = {}
        self._modified: dict[str, None] = {}
        self._owned_delta: Counter[int] = Counter()
        self._changes: dict[str, Change] = {}

    def get(self, path: str) -> Node | None:
        if path in self._copies:
            return self._copies[path]
        if self._node_limit is not None and len(self._copies) >= self._node_limit:
            raise StoreError(errno.ENOSPC, "transaction touches too many nodes")
        node = self._store.get(path)
        self._copies[path] = node
        self._observed[path] = node.generation if node else NO_GENERATION
        return node

    def put(
        self, path: str, value: bytes, permissions: Permissions, children: tuple[str, ...]
    ) -> None:
        old = self.get(path)
        if old is not None:
            self._owned_delta[old.owner] -= 1
        self._owned_delta[permissions[0].domid] += 1
        self._copies[path] = Node(value, permissions, children, self._store.next_generation())
        self._modified[path] = None

    def delete(self, path: str) -> None:
        old = self.get(path)
        if old is not None:
            self._owned_delta[old.owner] -= 1
        self._copies[path] = None
        self._modified[path] = None

    def owned(self, domid: int) -> int:
        return self._store.owned(domid) + self._owned_delta[domid]

    def record(self, changes: list[Change]) -> None:
        """Hold watch events until commit; one per path, a subtree event beating an exact one."""
        for change in changes:
            held = self._changes.get(change.path)
            if held is None:
                self._changes[change.path] = change
            else:
                self._changes[change.path] = Change(
                    change.path, held.exact and change.exact, held.readable + change.readable
                )

    def commit(self, caller: Caller, quotas: Quotas) -> list[Change]:
        """Apply to the store, or change nothing and raise EAGAIN (conflict) or ENOSPC (quota)."""
        for path, generation in self._observed.items():
            current = self._store.get(path)
            if (current.generation if current else NO_GENERATION) != generation:
                raise StoreError(errno.EAGAIN, f"{path} changed during the transaction")
        if (
            not caller.privileged
            and self._owned_delta[caller.domid] > 0
            and self.owned(caller.domid) > quotas.nodes
        ):
            raise StoreError(errno.ENOSPC, "transaction would exceed the nodes quota")
        for path in self._modified:
            node = self._copies[path]
            if node is not None:
                self._store.put(path, node.value, node.permissions, node.children)
            elif self._store.get(path) is not None:
                self._store.delete(path)
        return list(self._changes.values())


# -- operations ------------------------------------------------------------


def _nearest_existing_ancestor(view: View, path: str) -> Node:
    while True:
        path = parent_of(path)
        node = view.get(path)
        if node is not None:
            return node


def _lookup(view: View, caller: Caller, path: str, need: Access) -> Node:
    """The node, if `caller` has `need` on it.

    As xenstored's errno_from_parents(): ENOENT or a refusal is only revealed to
    a caller with some of `need` on the nearest existing ancestor; everyone else
    gets EACCES, so absence cannot be probed through unreadable directories.
    """
    node = view.get(path)
    if node is not None and caller.access(node.permissions) & need == need:
        return node
    number = errno.ENOENT if node is None else errno.EACCES
    if caller.access(_nearest_existing_ancestor(view, path).permissions) & need:
        raise StoreError(number, path)
    raise StoreError(errno.EACCES, path)


def _check_size(
    caller: Caller,
    quotas: Quotas,
    value: bytes,
    permissions: Permissions,
    children: tuple[str, ...],
) -> None:
    if not caller.privileged and node_size(value, permissions, children) > quotas.node_size:
        raise StoreError(errno.ENOSPC, "node over the node-size quota")


def _parent_permissions(view: View, path: str) -> Permissions:
    return _nearest_existing_ancestor(view, path).permissions


def read(view: View, caller: Caller, path: str) -> bytes:
    return _lookup(view, caller, path, Access.READ).value


def directory(view: View, caller: Caller, path: str) -> Node:
    return _lookup(view, caller, path, Access.READ)


def get_permissions(view: View, caller: Caller, path: str) -> Permissions:
    return _lookup(view, caller, path, Access.READ).permissions


def _create(view: View, caller: Caller, path: str, value: bytes, quotas: Quotas) -> list[Change]:
    """Create `path` and its missing ancestors, which inherit the nearest parent's list.

    An unprivileged creator becomes the owner of every node it creates; a
    privileged one leaves the inherited owner in place (xenstored's construct_node).
    """
    missing = [path]
    parent_path = parent_of(path)
    while (parent := view.get(parent_path)) is None:
        missing.append(parent_path)
        parent_path = parent_of(parent_path)
    if not caller.privileged and view.owned(caller.domid) + len(missing) > quotas.nodes:
        raise StoreError(errno.ENOSPC, "nodes quota reached")
    permissions = (
        parent.permissions if caller.privileged else with_owner(parent.permissions, caller.domid)
    )
    missing.reverse()
    writes = [
        (parent_path, parent.value, parent.permissions, (*parent.children, basename(missing[0])))
    ]
    for index, new_path in enumerate(missing):
        is_leaf = index == len(missing) - 1
        children: tuple[str, ...] = () if is_leaf else (basename(missing[index + 1]),)
        writes.append((new_path, value if is_leaf else b"", permissions, children))
    for _, node_value, node_permissions, children in writes:
        _check_size(caller, quotas, node_value, node_permissions, children)
    for write_path, node_value, node_permissions, children in writes:
        view.put(write_path, node_value, node_permissions, children)
    immediate_parent = permissions if len(missing) > 1 else parent.permissions
    return [Change(path, False, (permissions, immediate_parent))]


def write(view: View, caller: Caller, path: str, value: bytes, quotas: Quotas) -> list[Change]:
    try:
        node = _lookup(view, caller, path, Access.WRITE)
    except StoreError as error:
        if error.errno != errno.ENOENT:
            raise
        return _create(view, caller, path, value, quotas)
    _check_size(caller, quotas, value, node.permissions, node.children)
    parent_permissions = _parent_permissions(view, path)
    view.put(path, value, node.permissions, node.children)
    return [Change(path, False, (node.permissions, parent_permissions))]


def mkdir(view: View, caller: Caller, path: str, quotas: Quotas) -> list[Change]:
    try:
        _lookup(view, caller, path, Access.WRITE)
    except StoreError as error:
        if error.errno != errno.ENOENT:
            raise
        return _create(view, caller, path, b"", quotas)
    return []


def rm(view: View, caller: Caller, path: str) -> list[Change]:
    """Remove `path` and everything below it; children's own lists are not consulted."""
    try:
        node = _lookup(view, caller, path, Access.WRITE)
    except StoreError as error:
        if error.errno == errno.ENOENT and view.get(parent_of(path)) is not None:
            return []
        raise
    if path == "/":
        raise StoreError(errno.EINVAL, "cannot remove /")
    parent_path = parent_of(path)
    parent = view.get(parent_path)
    assert parent is not None, "an existing node always has a parent"
    # Look everything up before changing anything: a transaction may refuse a read.
    doomed = _subtree_post_order(view, path, node, parent.permissions)
    for doomed_path, _, _ in doomed:
        view.delete(doomed_path)
    name = basename(path)
    view.put(
        parent_path,
        parent.value,
        parent.permissions,
        tuple(child for child in parent.children if child != name),
    )
    return [
        Change(doomed_path, doomed_path != path, (permissions, parent_permissions))
        for doomed_path, permissions, parent_permissions in doomed
    ]


def _subtree_post_order(
    view: View, root: str, root_node: Node, parent_permissions: Permissions
) -> list[tuple[str, Permissions, Permissions]]:
    """(path, permissions, parent's permissions) below and including `root`, children first.

    Iterative: a 3072-byte path can nest deeper than Python's recursion limit.
    """
    order: list[tuple[str, Permissions, Permissions]] = []
    stack = [(root, root_node, parent_permissions, iter(root_node.children))]
    while stack:
        path, node, above, pending = stack[-1]
        name = next(pending, None)
        if name is None:
            stack.pop()
            order.append((path, node.permissions, above))
            continue
        below = child_path(path, name)
        child = view.get(below)
        if child is not None:
            stack.append((below, child, node.permissions, iter(child.children)))
    return order


def set_permissions(
    view: View, caller: Caller, path: str, permissions: Permissions, quotas: Quotas
) -> list[Change]:
    if not caller.privileged and len(permissions) > quotas.node_permissions:
        raise StoreError(errno.ENOSPC, "node-permissions quota")
    node = _lookup(view, caller, path, Access.WRITE | Access.OWNER)
    if not caller.privileged and permissions[0].domid != node.owner:
        raise StoreError(errno.EPERM, "only a privileged domain may change the owner")
    _check_size(caller, quotas, node.value, permissions, node.children)
    parent_permissions = _parent_permissions(view, path)
    view.put(path, node.value, permissions, node.children)
    return [Change(path, False, (permissions, node.permissions, parent_permissions))]


# -- domains ---------------------------------------------------------------

_DOM0 = Caller(0)


def domain_home(domid: int) -> str:
    return f"/local/domain/{domid}"


def create_domain_home(store: Store, domid: int) -> list[Change]:
    """Make /local/domain/<domid>, owned by the domain, unless it exists already."""
    home = domain_home(domid)
    if store.get(home) is not None:
        return []
    mkdir(store, _DOM0, home, Quotas())
    permissions = (Permission(domid, Access.NONE),)
    store.put(home, b"", permissions, ())
    return [Change(home, False, (permissions, _parent_permissions(store, home)))]


def release_domain(store: Store, domid: int) -> list[Change]:
    """Forget a domain as xenstored does when it goes away.

    Every node it owns is removed with its subtree, and its entries vanish from
    every other node, so a later domain reusing the id inherits nothing.
    """
    changes: list[Change] = []
    pending = ["/"]
    while pending:
        path = pending.pop()
        node = store.get(path)
        if node is None:
            continue
        if path != "/" and node.owner == domid:
            changes += rm(store, _DOM0, path)
            continue
        pending.extend(child_path(path, name) for name in node.children)
    for path in store.paths():
        node = store.get(path)
        assert node is not None
        stripped = without_domain(node.permissions, domid)
        if stripped != node.permissions:
            store.put(path, node.value, stripped, node.children)
    return changes


def special_change(store: Store, path: str) -> Change:
    node = store.get(path)
    assert node is not None, "special nodes always exist"
    return Change(path, True, (node.permissions,))
