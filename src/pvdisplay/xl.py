"""What the toolstack's device kinds share, below both `toolstack` and `input.config`.

`toolstack` reads the config file and owns vdispl; `input.config` owns vkb, whose
devices bind to vdispl connectors. Both speak this vocabulary: the config error, the
display device model a vkb binds to, xl.cfg's `KEY=VALUE,...` device strings, and the
XenStore write plan the host applies in one transaction. `toolstack` re-exports it, so
`toolstack.ConfigError`, `toolstack.NodePlan`, `toolstack.Vdispl` are these classes.
"""

import re
from dataclasses import dataclass

from pvdisplay.store.permissions import Permission
from pvdisplay.wire import displif

MAX_DIMENSION = 16384
# unique-id travels in a XenStore value and in xl's "id:WxH;..." list, so it may not
# contain the list's separators or whitespace.
UNIQUE_ID = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
UNIQUE_ID_FORM = "1-64 of A-Z a-z 0-9 _ . @ + -"


class ConfigError(ValueError):
    """A config mistake: `key` says where, the message what was expected."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Connector:
    unique_id: str
    width: int
    height: int

    def xl(self) -> str:
        return f"{self.unique_id}:{displif.format_resolution(self.width, self.height)}"


@dataclass(frozen=True)
class Vdispl:
    """One PV display device, as libxl_device_vdispl describes it."""

    devid: int
    backend_domid: int
    be_alloc: bool
    connectors: tuple[Connector, ...]

    def xl(self) -> str:
        """The device in xl.cfg syntax (what `toolstack.parse_xl_vdispl` reads back)."""
        connectors = ";".join(connector.xl() for connector in self.connectors)
        return f"backend={self.backend_domid},be-alloc={int(self.be_alloc)},connectors={connectors}"


@dataclass(frozen=True)
class NodeWrite:
    """Write `value` at `path` (an empty value for a directory), then set `permissions`."""

    path: str
    value: str
    permissions: tuple[Permission, ...]


@dataclass(frozen=True)
class NodePlan:
    """Subtrees to remove first (as libxl clears stale entries), then the writes, in order."""

    removals: tuple[str, ...]
    writes: tuple[NodeWrite, ...]


def split_settings(text: str, key: str, form: str) -> list[tuple[str, str]]:
    """An xl.cfg device string as xl_parse.c splits it: comma-separated `KEY=VALUE` items.

    Spaces around items, names and values are dropped and empty items skipped. `form`
    is the expected syntax, quoted in the error for an item without `=`.
    """
    settings = []
    for token in (part.strip() for part in text.split(",")):
        if not token:
            continue
        name, sep, value = token.partition("=")
        if not sep:
            raise ConfigError(key, f"{token!r} is not KEY=VALUE; expected {form}")
        settings.append((name.strip(), value.strip()))
    return settings
