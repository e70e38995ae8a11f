"""What the toolstack's device kinds share, below the vdispl config (`toolstack`) and `vkb`.

`toolstack` reads the config file and owns vdispl; `toolstack.vkb` owns vkb, whose
devices bind to vdispl connectors. Both speak this vocabulary: the config error, the
display device model a vkb binds to, xl.cfg's `KEY=VALUE,...` device strings, the
XenStore write plan the host applies in one transaction, and the directories every
device gets (libxl_device.c `libxl__device_generic_add`). `toolstack` re-exports it, so
`toolstack.ConfigError`, `toolstack.NodePlan`, `toolstack.Vdispl` are these classes.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from pvdisplay import xenbus
from pvdisplay.store.permissions import Access, Permission
from pvdisplay.wire import displif


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

    @property
    def backend_kind(self) -> str:
        return displif.DRIVER_NAME

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


@dataclass(frozen=True)
class DeviceDirs:
    """The XenStore directories of one PV device, as libxl lays them out, and their owners.

    The frontend directory is the guest's, readable by the backend (`guest_owned`). The
    backend directory is the backend domain's, readable by the guest (`toolstack_owned`,
    also for frontend nodes only the toolstack may set). libxl keeps a dom0-only copy of
    the backend entries under /libxl.
    """

    kind: str
    frontend_domid: int
    backend_domid: int
    devid: int
    backend_kind: str = ""
    """Where the backend directory goes, when not under `kind` (libxl's vinput)."""

    @property
    def front(self) -> str:
        return xenbus.frontend_path(self.frontend_domid, self.kind, self.devid)

    @property
    def back(self) -> str:
        kind = self.backend_kind or self.kind
        return xenbus.backend_path(self.backend_domid, kind, self.frontend_domid, self.devid)

    @property
    def libxl(self) -> str:
        return f"/libxl/{self.frontend_domid}/device/{self.kind}/{self.devid}"

    @property
    def guest_owned(self) -> tuple[Permission, ...]:
        return (
            Permission(self.frontend_domid, Access.NONE),
            Permission(self.backend_domid, Access.READ),
        )

    @property
    def toolstack_owned(self) -> tuple[Permission, ...]:
        return (
            Permission(self.backend_domid, Access.NONE),
            Permission(self.frontend_domid, Access.READ),
        )

    def plan(
        self,
        front_settings: Sequence[NodeWrite] = (),
        back_settings: Sequence[tuple[str, str]] = (),
    ) -> NodePlan:
        """What `xl create` writes for the device (`libxl__device_generic_add`).

        `front_settings` follow the frontend's own nodes; `back_settings` (name, value)
        follow the backend's, in the backend directory and in libxl's copy.
        """
        front, back, libxl = self.front, self.back, self.libxl
        guest_owned, toolstack_owned = self.guest_owned, self.toolstack_owned
        dom0_only = (Permission(0, Access.NONE),)
        initialising = xenbus.XenbusState.INITIALISING.encode()
        back_entries = [
            (xenbus.FIELD_FRONTEND_ID, str(self.frontend_domid)),
            (xenbus.FIELD_ONLINE, "1"),
            (xenbus.FIELD_STATE, initialising),
            *back_settings,
        ]
        writes = [
            NodeWrite(libxl, "", dom0_only),
            NodeWrite(f"{libxl}/{xenbus.FIELD_FRONTEND}", front, dom0_only),
            NodeWrite(f"{libxl}/{xenbus.FIELD_BACKEND}", back, dom0_only),
            NodeWrite(front, "", guest_owned),
            NodeWrite(f"{front}/{xenbus.FIELD_BACKEND}", back, guest_owned),
            NodeWrite(f"{front}/{xenbus.FIELD_BACKEND_ID}", str(self.backend_domid), guest_owned),
            NodeWrite(f"{front}/{xenbus.FIELD_STATE}", initialising, guest_owned),
            *front_settings,
            NodeWrite(back, "", toolstack_owned),
            NodeWrite(f"{back}/{xenbus.FIELD_FRONTEND}", front, toolstack_owned),
            *(NodeWrite(f"{back}/{name}", value, toolstack_owned) for name, value in back_entries),
            *(NodeWrite(f"{libxl}/{name}", value, dom0_only) for name, value in back_entries),
        ]
        return NodePlan((libxl, front, back), tuple(writes))
