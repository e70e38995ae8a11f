"""XenStore node permissions, decided the way xenstored's `perm_for_conn` decides them.

A node carries a permission list. The first entry names the owner and the
access everyone else gets by default; later entries give one domain its own
access. The wire form is one letter (n, r, w or b) followed by a decimal domid.
"""

import enum
import errno
from dataclasses import dataclass

from pvdisplay.wire.errors import ProtocolError

DOMID_MAX = 0xFFFF


class Access(enum.IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    OWNER = 4


ALL = Access.READ | Access.WRITE | Access.OWNER


_LETTERS = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.READ | Access.WRITE}
_LETTER_OF = {access: letter for letter, access in _LETTERS.items()}


@dataclass(frozen=True, slots=True)
class Permission:
    domid: int
    access: Access

    def __str__(self) -> str:
        return f"{_LETTER_OF[self.access & (Access.READ | Access.WRITE)]}{self.domid}"

    @classmethod
    def parse(cls, text: bytes) -> "Permission":
        """`b"r3"` -> read for domain 3; anything else is EINVAL, as in libxenstore."""
        letter, digits = text[:1].decode("ascii", "replace"), text[1:]
        if letter not in _LETTERS or not digits.isdigit() or len(digits) > 5:
            raise ProtocolError(errno.EINVAL, f"bad permission {text!r}")
        domid = int(digits)
        if domid > DOMID_MAX:
            raise ProtocolError(errno.EINVAL, f"domid {domid} out of range")
        return cls(domid, _LETTERS[letter])


Permissions = tuple[Permission, ...]

# xenstored's initial nodes: owned by dom0, no access for anyone else.
DOM0_ONLY: Permissions = (Permission(0, Access.NONE),)


def encode(permissions: Permissions) -> bytes:
    """The GET_PERMS reply: every entry NUL-terminated."""
    return b"".join(str(entry).encode() + b"\0" for entry in permissions)


def with_owner(permissions: Permissions, owner: int) -> Permissions:
    return (Permission(owner, permissions[0].access), *permissions[1:])


def without_domain(permissions: Permissions, domid: int) -> Permissions:
    """Drop the entries naming `domid`, so a later domain with its id inherits nothing."""
    owner, *entries = permissions
    if owner.domid == domid:
        owner = Permission(0, owner.access)
    return (owner, *(entry for entry in entries if entry.domid != domid))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the domain a connection arrived as, never what it claims.

    `target` is the domain this one controls through SET_TARGET: the caller then
    acts as owner of the target's nodes and inherits the target's entries.
    A read-only dom0 connection keeps read and owner rights but never writes.
    """

    domid: int
    target: int | None = None
    read_only: bool = False

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    def _is(self, domid: int) -> bool:
        return domid == self.domid or (self.target is not None and domid == self.target)

    def access(self, permissions: Permissions) -> Access:
        mask = ALL & ~Access.WRITE if self.read_only else ALL
        owner, *entries = permissions
        if self.privileged or self._is(owner.domid):
            return mask
        for entry in entries:
            if self._is(entry.domid):
                return entry.access & mask
        return owner.access & mask
