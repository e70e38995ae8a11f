"""The pure XenStore tree: paths, permissions, operations, quotas, transactions."""

import errno
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from pvdisplay.store import tree
from pvdisplay.store.permissions import Access, Caller, Permission, encode
from pvdisplay.store.tree import Quotas, Store, StoreError, Transaction
from pvdisplay.wire.errors import ProtocolError

DOM0 = Caller(0)
GUEST = Caller(5)
OTHER = Caller(6)
QUOTAS = Quotas()


def perms(*entries: str) -> tuple[Permission, ...]:
    return tuple(Permission.parse(entry.encode()) for entry in entries)


def refused(number: int) -> AbstractContextManager[pytest.ExceptionInfo[StoreError]]:
    return pytest.raises(StoreError, match=errno.errorcode[number])


def snapshot(store: Store) -> dict[str, tuple[bytes, tuple[Permission, ...], tuple[str, ...]]]:
    result = {}
    for path in store.paths():
        node = store.get(path)
        assert node is not None
        result[path] = (node.value, node.permissions, node.children)
    return result


def guest_area(store: Store) -> None:
    """/shared writable by domain 5, /secret readable by nobody but dom0."""
    tree.write(store, DOM0, "/shared", b"", QUOTAS)
    tree.set_permissions(store, DOM0, "/shared", perms("n0", "b5"), QUOTAS)
    tree.write(store, DOM0, "/secret", b"s3cr3t", QUOTAS)


class TestPaths:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            (b"/", "/"),
            (b"/a/b-c_d@e", "/a/b-c_d@e"),
            (b"device/vdispl/0", "/local/domain/7/device/vdispl/0"),
        ],
    )
    def test_canonical(self, raw: bytes, expected: str) -> None:
        assert tree.canonical_path(raw, 7) == expected

    @pytest.mark.parametrize(
        "raw",
        [b"", b"/a/", b"/a//b", b"/a b", b"/caf\xc3\xa9", b"/\xff", b"@introduceDomain", b"/a\n"],
    )
    def test_invalid_paths_are_einval(self, raw: bytes) -> None:
        with refused(errno.EINVAL):
            tree.canonical_path(raw, 0)

    def test_special_paths_only_where_allowed(self) -> None:
        assert tree.canonical_path(b"@releaseDomain", 3, special=True) == "@releaseDomain"

    def test_absolute_limit_applies_to_everyone(self) -> None:
        longest = b"/" + b"a" * 3071
        assert tree.canonical_path(longest, 0) == longest.decode()
        with refused(errno.EINVAL):
            tree.canonical_path(longest + b"a", 0)

    def test_quota_counts_from_the_domain_home(self) -> None:
        relative = b"x" * 100
        assert tree.canonical_path(relative, 5, path_max=100).endswith("x" * 100)
        with refused(errno.EINVAL):
            tree.canonical_path(relative + b"x", 5, path_max=100)
        with refused(errno.EINVAL):
            tree.canonical_path(b"/" + relative, 5, path_max=100)

    def test_parents(self) -> None:
        assert tree.parent_of("/a/b") == "/a"
        assert tree.parent_of("/a") == "/"
        assert tree.parent_of("@releaseDomain") == "/"
        assert tree.is_at_or_below("/a/b", "/a")
        assert not tree.is_at_or_below("/ab", "/a")
        assert not tree.is_at_or_below("@introduceDomain", "/")


class TestPermissions:
    def test_wire_form_round_trips(self) -> None:
        listed = perms("n0", "r1", "w2", "b65535")
        assert encode(listed) == b"n0\0r1\0w2\0b65535\0"

    @pytest.mark.parametrize("text", [b"x1", b"r", b"r-1", b"r65536", b"r0x10", b"b1 ", b""])
    def test_malformed_permission(self, text: bytes) -> None:
        with pytest.raises(ProtocolError):
            Permission.parse(text)

    def test_owner_gets_everything_and_others_the_default(self) -> None:
        listed = perms("r5")
        assert GUEST.access(listed) == Access.READ | Access.WRITE | Access.OWNER
        assert OTHER.access(listed) == Access.READ

    def test_first_matching_entry_wins(self) -> None:
        listed = perms("n0", "w6", "b6")
        assert OTHER.access(listed) == Access.WRITE
        assert GUEST.access(listed) == Access.NONE

    def test_target_acts_for_its_domain(self) -> None:
        stubdom = Caller(9, target=5)
        assert stubdom.access(perms("n5")) & Access.OWNER
        assert stubdom.access(perms("n0", "r5")) == Access.READ
        assert Caller(9).access(perms("n0", "r5")) == Access.NONE

    def test_read_only_dom0_never_writes(self) -> None:
        assert Caller(0, read_only=True).access(perms("n0")) == Access.READ | Access.OWNER


class TestOperations:
    def test_initial_nodes_match_xenstored(self) -> None:
        store = Store()
        assert tree.directory(store, DOM0, "/").children == ("tool",)
        assert tree.get_permissions(store, DOM0, "@introduceDomain") == perms("n0")

    def test_write_creates_parents_with_inherited_permissions(self) -> None:
        store = Store()
        guest_area(store)
        changes = tree.write(store, GUEST, "/shared/a/b/c", b"v", QUOTAS)
        assert [change.path for change in changes] == ["/shared/a/b/c"]
        for path in ("/shared/a", "/shared/a/b", "/shared/a/b/c"):
            assert tree.get_permissions(store, DOM0, path) == perms("n5", "b5")
        assert tree.read(store, GUEST, "/shared/a/b") == b""
        assert tree.directory(store, DOM0, "/shared").children == ("a",)

    def test_privileged_creator_keeps_the_inherited_owner(self) -> None:
        store = Store()
        tree.create_domain_home(store, 5)
        tree.write(store, DOM0, "/local/domain/5/device/vkbd", b"", QUOTAS)
        assert tree.get_permissions(store, DOM0, "/local/domain/5/device/vkbd") == perms("n5")

    def test_rewrite_keeps_children_and_permissions(self) -> None:
        store = Store()
        tree.write(store, DOM0, "/a/b", b"1", QUOTAS)
        tree.write(store, DOM0, "/a", b"parent", QUOTAS)
        assert tree.directory(store, DOM0, "/a").children == ("b",)
        assert tree.read(store, DOM0, "/a") == b"parent"

    def test_binary_values_survive(self) -> None:
        store = Store()
        tree.write(store, DOM0, "/bin", b"\0\xff\0", QUOTAS)
        assert tree.read(store, DOM0, "/bin") == b"\0\xff\0"

    def test_mkdir_leaves_existing_values(self) -> None:
        store = Store()
        tree.write(store, DOM0, "/a", b"keep", QUOTAS)
        assert tree.mkdir(store, DOM0, "/a", QUOTAS) == []
        assert tree.read(store, DOM0, "/a") == b"keep"

    def test_rm_is_recursive_and_reports_every_node(self) -> None:
        store = Store()
        tree.write(store, DOM0, "/a/b/c", b"", QUOTAS)
        tree.write(store, DOM0, "/a/d", b"", QUOTAS)
        changes = tree.rm(store, DOM0, "/a")
        assert [(change.path, change.exact) for change in changes] == [
            ("/a/b/c", True),
            ("/a/b", True),
            ("/a/d", True),
            ("/a", False),
        ]
        assert store.get("/a/b") is None
        assert tree.directory(store, DOM0, "/").children == ("tool",)

    def test_rm_of_missing_node(self) -> None:
        store = Store()
        tree.write(store, DOM0, "/a", b"", QUOTAS)
        assert tree.rm(store, DOM0, "/a/missing") == []
        with refused(errno.ENOENT):
            tree.rm(store, DOM0, "/nowhere/missing")

    def test_root_cannot_be_removed(self) -> None:
        with refused(errno.EINVAL):
            tree.rm(Store(), DOM0, "/")

    def test_deep_trees_do_not_recurse(self) -> None:
        store = Store()
        deep = "/d" * 1500
        tree.write(store, DOM0, deep, b"bottom", QUOTAS)
        assert len(tree.rm(store, DOM0, "/d")) == 1500


class TestAccessControl:
    def test_guest_reads_and_writes_only_what_it_may(self) -> None:
        store = Store()
        guest_area(store)
        with refused(errno.EACCES):
            tree.read(store, GUEST, "/secret")
        with refused(errno.EACCES):
            tree.write(store, GUEST, "/secret", b"x", QUOTAS)
        with refused(errno.EACCES):
            tree.write(store, GUEST, "/elsewhere", b"x", QUOTAS)
        with refused(errno.EACCES):
            tree.rm(store, GUEST, "/secret")
        tree.write(store, GUEST, "/shared/mine", b"x", QUOTAS)
        with refused(errno.EACCES):
            tree.read(store, OTHER, "/shared/mine")

    def test_absence_is_hidden_behind_unreadable_parents(self) -> None:
        store = Store()
        guest_area(store)
        with refused(errno.EACCES):
            tree.read(store, GUEST, "/secret/missing")
        with refused(errno.ENOENT):
            tree.read(store, GUEST, "/shared/missing")

    def test_only_owner_sets_permissions_and_never_gives_away_ownership(self) -> None:
        store = Store()
        guest_area(store)
        tree.write(store, GUEST, "/shared/mine", b"x", QUOTAS)
        tree.set_permissions(store, GUEST, "/shared/mine", perms("n5", "r6"), QUOTAS)
        assert tree.read(store, OTHER, "/shared/mine") == b"x"
        with refused(errno.EPERM):
            tree.set_permissions(store, GUEST, "/shared/mine", perms("b6"), QUOTAS)
        with refused(errno.EACCES):
            tree.set_permissions(store, GUEST, "/shared", perms("b5"), QUOTAS)
        with refused(errno.EACCES):
            tree.set_permissions(store, GUEST, "@releaseDomain", perms("n5"), QUOTAS)

    def test_read_only_connection_cannot_change_anything(self) -> None:
        store = Store()
        read_only = Caller(0, read_only=True)
        tree.write(store, DOM0, "/a", b"1", QUOTAS)
        assert tree.read(store, read_only, "/a") == b"1"
        operations: list[Callable[[], object]] = [
            lambda: tree.write(store, read_only, "/a", b"2", QUOTAS),
            lambda: tree.mkdir(store, read_only, "/b", QUOTAS),
            lambda: tree.rm(store, read_only, "/a"),
            lambda: tree.set_permissions(store, read_only, "/a", perms("b0"), QUOTAS),
        ]
        for operation in operations:
            with refused(errno.EACCES):
                operation()
        assert tree.read(store, DOM0, "/a") == b"1"

    def test_watch_visibility(self) -> None:
        store = Store()
        guest_area(store)
        (secret,) = tree.write(store, DOM0, "/secret", b"new", QUOTAS)
        (shared,) = tree.write(store, DOM0, "/shared", b"new", QUOTAS)
        assert not secret.visible_to(GUEST)
        assert shared.visible_to(GUEST)
        (revoked,) = tree.set_permissions(store, DOM0, "/shared", perms("n0"), QUOTAS)
        assert revoked.visible_to(GUEST), "losing access is itself worth an event"


class TestQuotas:
    def test_nodes(self) -> None:
        store = Store()
        guest_area(store)
        small = Quotas(nodes=3)
        tree.write(store, GUEST, "/shared/a/b", b"", small)
        with refused(errno.ENOSPC):
            tree.write(store, GUEST, "/shared/c/d", b"", small)
        tree.write(store, GUEST, "/shared/c", b"", small)
        assert store.owned(5) == 3
        tree.rm(store, GUEST, "/shared/a")
        assert store.owned(5) == 1
        tree.write(store, DOM0, "/shared/x/y/z/w", b"", small)

    def test_node_size_counts_like_xenstored(self) -> None:
        store = Store()
        guest_area(store)
        # 16-byte header + two 8-byte permission entries + value.
        limit = Quotas(node_size=16 + 16 + 100)
        tree.write(store, GUEST, "/shared/v", b"x" * 100, limit)
        with refused(errno.ENOSPC):
            tree.write(store, GUEST, "/shared/v", b"x" * 101, limit)
        tree.write(store, DOM0, "/shared/v", b"x" * 4000, limit)

    def test_permission_entries(self) -> None:
        store = Store()
        guest_area(store)
        tree.write(store, GUEST, "/shared/p", b"", QUOTAS)
        with refused(errno.ENOSPC):
            tree.set_permissions(
                store, GUEST, "/shared/p", perms("n5", "r1", "r2"), Quotas(node_permissions=2)
            )

    def test_refusals_change_nothing(self) -> None:
        store = Store()
        guest_area(store)
        before = snapshot(store)
        with refused(errno.ENOSPC):
            tree.write(store, GUEST, "/shared/a/b/c", b"", Quotas(nodes=2))
        assert snapshot(store) == before


class TestTransactions:
    def test_sees_its_own_writes_others_do_not(self) -> None:
        store = Store()
        transaction = Transaction(store)
        tree.write(transaction, DOM0, "/t/a", b"1", QUOTAS)
        assert tree.read(transaction, DOM0, "/t/a") == b"1"
        assert store.get("/t") is None
        transaction.commit(DOM0, QUOTAS)
        assert tree.read(store, DOM0, "/t/a") == b"1"

    def test_conflict_is_eagain_and_changes_nothing(self) -> None:
        store = Store()
        tree.write(store, DOM0, "/a", b"0", QUOTAS)
        transaction = Transaction(store)
        tree.read(transaction, DOM0, "/a")
        tree.write(transaction, DOM0, "/b", b"from transaction", QUOTAS)
        tree.write(store, DOM0, "/a", b"intervening", QUOTAS)
        before = snapshot(store)
        with refused(errno.EAGAIN):
            transaction.commit(DOM0, QUOTAS)
        assert snapshot(store) == before

    def test_unrelated_writes_do_not_conflict(self) -> None:
        store = Store()
        tree.write(store, DOM0, "/a", b"0", QUOTAS)
        tree.write(store, DOM0, "/c", b"0", QUOTAS)
        transaction = Transaction(store)
        tree.write(transaction, DOM0, "/a", b"1", QUOTAS)
        tree.write(store, DOM0, "/c", b"elsewhere", QUOTAS)
        transaction.commit(DOM0, QUOTAS)
        assert tree.read(store, DOM0, "/a") == b"1"

    def test_new_child_of_a_listed_directory_conflicts(self) -> None:
        store = Store()
        tree.write(store, DOM0, "/dir/x", b"", QUOTAS)
        transaction = Transaction(store)
        tree.directory(transaction, DOM0, "/dir")
        tree.write(store, DOM0, "/dir/y", b"", QUOTAS)
        with refused(errno.EAGAIN):
            transaction.commit(DOM0, QUOTAS)

    def test_events_are_held_until_commit(self) -> None:
        store = Store()
        transaction = Transaction(store)
        tree.write(store, DOM0, "/w", b"", QUOTAS)
        transaction.record(tree.write(transaction, DOM0, "/w/a", b"1", QUOTAS))
        transaction.record(tree.rm(transaction, DOM0, "/w/a"))
        changes = transaction.commit(DOM0, QUOTAS)
        assert [(change.path, change.exact) for change in changes] == [("/w/a", False)]
        assert store.get("/w/a") is None

    def test_touched_nodes_are_limited(self) -> None:
        store = Store()
        transaction = Transaction(store, node_limit=3)
        tree.read(transaction, DOM0, "/tool")
        with refused(errno.ENOSPC):
            tree.write(transaction, DOM0, "/x/y/z", b"", QUOTAS)

    def test_nodes_quota_is_checked_again_at_commit(self) -> None:
        store = Store()
        guest_area(store)
        small = Quotas(nodes=3)
        transaction = Transaction(store)
        tree.create_domain_home(store, 5)
        tree.write(transaction, GUEST, "/shared/t", b"", small)
        tree.write(store, GUEST, "/local/domain/5/a", b"", small)
        tree.write(store, GUEST, "/local/domain/5/b", b"", small)
        with refused(errno.ENOSPC):
            transaction.commit(GUEST, small)


class TestDomains:
    def test_home_is_created_once_and_owned_by_the_domain(self) -> None:
        store = Store()
        assert [change.path for change in tree.create_domain_home(store, 3)] == ["/local/domain/3"]
        assert tree.get_permissions(store, DOM0, "/local/domain/3") == perms("n3")
        assert tree.get_permissions(store, DOM0, "/local/domain") == perms("n0")
        assert tree.create_domain_home(store, 3) == []

    def test_release_removes_owned_nodes_and_forgets_grants(self) -> None:
        store = Store()
        guest_area(store)
        tree.create_domain_home(store, 5)
        tree.write(store, GUEST, "/local/domain/5/data", b"", QUOTAS)
        tree.write(store, GUEST, "/shared/mine/deeper", b"", QUOTAS)
        tree.write(store, DOM0, "/backend", b"", QUOTAS)
        tree.set_permissions(store, DOM0, "/backend", perms("n0", "r5", "r6"), QUOTAS)
        changes = tree.release_domain(store, 5)
        assert {change.path for change in changes} >= {"/local/domain/5", "/shared/mine"}
        assert store.get("/local/domain/5") is None
        assert store.get("/shared/mine") is None
        assert tree.get_permissions(store, DOM0, "/backend") == perms("n0", "r6")
        assert tree.get_permissions(store, DOM0, "/shared") == perms("n0")
        assert store.owned(5) == 0
