"""Properties of the tree model under random operations by random callers.

- Structure: every node's parent lists it exactly once, every listed child
  exists, and the per-owner node counts match a recount.
- Authority: an operation that changed the tree was allowed by the permissions
  in force before it (an oracle written independently of the implementation).
- Atomicity: a refused operation changes nothing.
- Serializability: a committed transaction had the same results, and leaves
  the same tree, as running its operations after the interleaved direct ones.
"""

import errno
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from test_store_tree import snapshot

from pvdisplay.store import tree
from pvdisplay.store.permissions import Access, Caller, Permission, Permissions
from pvdisplay.store.tree import Quotas, Store, StoreError, Transaction, View

CALLERS = (Caller(0), Caller(5), Caller(6), Caller(9, target=5), Caller(0, read_only=True))
QUOTAS = Quotas(nodes=12, node_size=200, node_permissions=3)
ROOTS = ("/shared", "/secret", "/local/domain/5", "/local/domain/6", "/tool")

paths = st.builds(
    lambda root, parts: "/".join((root, *parts)),
    st.sampled_from(ROOTS),
    st.lists(st.sampled_from("abc"), max_size=3),
) | st.sampled_from(["/", "/local", "@releaseDomain"])
permission_lists = st.lists(
    st.builds(
        Permission,
        st.sampled_from([0, 5, 6, 9]),
        st.sampled_from([Access.NONE, Access.READ, Access.WRITE, Access.READ | Access.WRITE]),
    ),
    min_size=1,
    max_size=4,
).map(tuple)


@dataclass(frozen=True)
class Operation:
    name: str
    path: str
    value: bytes = b""
    permissions: Permissions = ()


operations = st.one_of(
    st.builds(Operation, st.just("write"), paths, st.binary(max_size=120)),
    st.builds(Operation, st.sampled_from(["mkdir", "rm", "read", "directory", "perms"]), paths),
    st.builds(Operation, st.just("set_perms"), paths, st.just(b""), permission_lists),
)
calls = st.tuples(st.sampled_from(CALLERS), operations)

Result = tuple[str, object]


def run(view: View, caller: Caller, operation: Operation, quotas: Quotas = QUOTAS) -> Result:
    """Outcome of one operation: ("ok", what it returned) or ("error", errno)."""
    path = operation.path
    actions: dict[str, Callable[[], object]] = {
        "write": lambda: tree.write(view, caller, path, operation.value, quotas),
        "mkdir": lambda: tree.mkdir(view, caller, path, quotas),
        "rm": lambda: tree.rm(view, caller, path),
        "read": lambda: tree.read(view, caller, path),
        "directory": lambda: tree.directory(view, caller, path).children,
        "perms": lambda: tree.get_permissions(view, caller, path),
        "set_perms": lambda: tree.set_permissions(
            view, caller, path, operation.permissions, quotas
        ),
    }
    if path.startswith("@") and operation.name not in ("perms", "set_perms"):
        return ("error", errno.EINVAL)
    try:
        outcome = actions[operation.name]()
    except StoreError as error:
        return ("error", error.errno)
    if isinstance(outcome, list):
        outcome = [(change.path, change.exact) for change in outcome]
    return ("ok", outcome)


def populated_store() -> Store:
    store = Store()
    dom0 = Caller(0)
    for path, listed in (
        ("/shared", "n0 b5 r6"),
        ("/secret", "n0"),
        ("/local/domain/5", "n5"),
        ("/local/domain/6", "n6 r5"),
    ):
        tree.write(store, dom0, path, b"seed", Quotas())
        permissions = tuple(Permission.parse(entry.encode()) for entry in listed.split())
        tree.set_permissions(store, dom0, path, permissions, Quotas())
    return store


def check_structure(store: Store) -> None:
    nodes = snapshot(store)
    owners: Counter[int] = Counter()
    for path, (_, permissions, children) in nodes.items():
        owners[permissions[0].domid] += 1
        assert len(set(children)) == len(children), path
        for name in children:
            assert tree.child_path(path, name) in nodes, f"{path} lists missing {name}"
        if path != "/" and not path.startswith("@"):
            parent = nodes[tree.parent_of(path)]
            assert parent[2].count(tree.basename(path)) == 1, f"{path} not listed once"
    for domid, count in owners.items():
        assert store.owned(domid) == count


def allowed(
    before: dict[str, tuple[bytes, Permissions, tuple[str, ...]]],
    caller: Caller,
    operation: Operation,
) -> bool:
    """Whether the permissions before the operation let `caller` change the tree with it."""
    path = operation.path
    if path in before:
        need = Access.WRITE | Access.OWNER if operation.name == "set_perms" else Access.WRITE
        permissions = before[path][1]
        if (
            operation.name == "set_perms"
            and not caller.privileged
            and operation.permissions[0].domid != permissions[0].domid
        ):
            return False
        return caller.access(permissions) & need == need
    if operation.name not in ("write", "mkdir"):
        return False
    ancestor = tree.parent_of(path)
    while ancestor not in before:
        ancestor = tree.parent_of(ancestor)
    return bool(caller.access(before[ancestor][1]) & Access.WRITE)


@settings(max_examples=150, deadline=None)
@given(st.lists(calls, max_size=40))
def test_operations_keep_structure_authority_and_atomicity(
    script: list[tuple[Caller, Operation]],
) -> None:
    store = populated_store()
    for caller, operation in script:
        before = snapshot(store)
        owned_before = store.owned(caller.domid)
        outcome, _ = run(store, caller, operation)
        after = snapshot(store)
        check_structure(store)
        if outcome == "error":
            assert after == before, "a refused operation changed the tree"
        elif after != before:
            assert allowed(before, caller, operation), (caller, operation)
        if not caller.privileged and owned_before <= QUOTAS.nodes:
            assert store.owned(caller.domid) <= QUOTAS.nodes


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(CALLERS[:4]),
    st.lists(st.tuples(st.booleans(), calls), max_size=30),
)
def test_committed_transactions_are_serializable(
    owner: Caller, schedule: list[tuple[bool, tuple[Caller, Operation]]]
) -> None:
    roomy = Quotas()
    store = populated_store()
    transaction = Transaction(store)
    inside: list[tuple[Operation, Result]] = []
    outside: list[tuple[Caller, Operation]] = []
    for in_transaction, (caller, operation) in schedule:
        if in_transaction:
            inside.append((operation, run(transaction, owner, operation, roomy)))
        else:
            outside.append((caller, operation))
            run(store, caller, operation, roomy)
    try:
        transaction.commit(owner, roomy)
        committed = True
    except StoreError as error:
        assert error.errno == errno.EAGAIN
        committed = False
    check_structure(store)

    replay = populated_store()
    for caller, operation in outside:
        run(replay, caller, operation, roomy)
    if committed:
        for operation, result in inside:
            assert run(replay, owner, operation, roomy) == result, operation
    assert snapshot(store) == snapshot(replay)
