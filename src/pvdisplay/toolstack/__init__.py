"""The toolstack's share of the emulated host: a config file in, XenStore nodes out (sans-IO).

A TOML file names the backend domain and the guests; each guest's `vdispl` list
uses xl.cfg's own device syntax (or the same fields as a TOML table):

    [backend]
    name = "Domain-0"
    domid = 0
    page_budget = 16384
    descriptor_budget = 256
    planes_clients = 64

    [hypervisor]             # per-domain limits of the emulated hypervisor (hv.local Limits)
    descriptors = 1024

    [xenstored]              # per-domain quotas of xenstored (store.tree Quotas)
    watches = 128

    [web]                    # the emulated host's web viewer
    max_clients = 32

    [[guest]]
    name = "alpha"
    vdispl = ["backend=0,be-alloc=1,connectors=id0:1920x1080;id1:800x600"]
    vkb = ["backend=0,unique-id=id0,feature-abs-pointer=1,feature-multi-touch=1"]

`vkb` strings are parsed by `toolstack.vkb` (xl.cfg's vkb syntax); each binds to the
guest's connector with the same unique-id. `domain_nodes` and `vdispl_nodes` give the
writes libxl makes for a domain and for one vdispl device (libxl_create.c
`libxl__domain_make`, libxl_device.c `libxl__device_generic_add`, libxl_vdispl.c
`libxl__set_xenstore_vdispl`), each with its permission list, for the host to apply in
one transaction.
"""

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pvdisplay.display.limits import (
    DEFAULT_DESCRIPTOR_BUDGET,
    DEFAULT_PAGE_BUDGET,
    LEGACY_UNIQUE_ID_FIELD,
    MAX_CONNECTORS,
    MAX_DIMENSION,
    UNIQUE_ID,
    mode_problem,
)
from pvdisplay.hv.local.tables import Limits
from pvdisplay.outputs.web.limits import DEFAULT_MAX_CLIENTS as WEB_MAX_CLIENTS
from pvdisplay.planes.server import MAX_CLIENTS
from pvdisplay.store.permissions import Access, Permission
from pvdisplay.store.tree import Quotas
from pvdisplay.toolstack import vkb as vkb_config
from pvdisplay.toolstack.xl_syntax import (
    ConfigError,
    Connector,
    DeviceDirs,
    NodePlan,
    NodeWrite,
    Vdispl,
    split_settings,
)
from pvdisplay.wire import displif

# The shared device vocabulary (pvdisplay.toolstack.xl_syntax) is part of this module's interface.
__all__ = [
    "CONNECTOR_FORM",
    "KIND",
    "LEGACY_UNIQUE_ID_FIELD",
    "MAX_CONNECTORS",
    "MAX_DIMENSION",
    "XL_FORM",
    "BackendConfig",
    "ConfigError",
    "Connector",
    "Guest",
    "HostConfig",
    "NodePlan",
    "NodeWrite",
    "Vdispl",
    "check_backends",
    "domain_nodes",
    "domain_path",
    "guest_teardown_paths",
    "parse_config",
    "parse_connectors",
    "parse_xl_vdispl",
    "vdispl_nodes",
]

KIND = "vdispl"

_DECIMAL = re.compile(r"[0-9]{1,5}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RESOLUTION = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")

CONNECTOR_FORM = "UNIQUE-ID:WIDTHxHEIGHT, e.g. id0:1920x1080"
XL_FORM = "'backend=DOMAIN,be-alloc=0|1,connectors=ID:WxH;ID:WxH'"


@dataclass(frozen=True)
class Guest:
    name: str
    domid: int | None
    vdispls: tuple[Vdispl, ...]
    vkbs: tuple[vkb_config.Vkb, ...] = ()


@dataclass(frozen=True)
class BackendConfig:
    name: str
    domid: int
    copy: bool
    page_budget: int = DEFAULT_PAGE_BUDGET
    """Pages each frontend device may make the backend hold (display buffers)."""
    descriptor_budget: int = DEFAULT_DESCRIPTOR_BUDGET
    """Descriptors each frontend device may make the backend hold (display buffers)."""
    planes_clients: int = MAX_CLIENTS
    """Local clients (outputs) the backend's planes socket serves at once."""


HYPERVISOR_KEYS = tuple(f.name for f in fields(Limits) if f.name != "backend_domid")
"""The `[hypervisor]` settings: every per-domain limit of the emulated hypervisor."""
XENSTORED_KEYS = tuple(f.name for f in fields(Quotas))
"""The `[xenstored]` settings: every quota of xenstored."""


@dataclass(frozen=True)
class HostConfig:
    backend: BackendConfig
    guests: tuple[Guest, ...]
    limits: Limits = field(default_factory=Limits)
    """The emulated hypervisor's per-domain limits; `backend_domid` is the backend's."""
    quotas: Quotas = field(default_factory=Quotas)
    """xenstored's per-domain quotas."""
    web_clients: int = WEB_MAX_CLIENTS
    """WebSockets the emulated host's web viewer serves at once."""


# -- parsing ----------------------------------------------------------------------------


def parse_connectors(text: str, key: str) -> tuple[Connector, ...]:
    """xl's `connectors=` value: `ID:WxH` items separated by `;` (empty items skipped)."""
    connectors = []
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        unique_id, sep, resolution = item.partition(":")
        match = _RESOLUTION.fullmatch(resolution.strip())
        if not sep or not UNIQUE_ID.fullmatch(unique_id.strip()) or match is None:
            raise ConfigError(key, f"{item!r} is not {CONNECTOR_FORM}")
        connectors.append(
            Connector(unique_id.strip(), _dimension(match[1], key), _dimension(match[2], key))
        )
    return _checked_connectors(connectors, key)


def parse_xl_vdispl(
    spec: str, devid: int, key: str, domains: Mapping[str, int], default_backend: int
) -> Vdispl:
    """One xl.cfg `vdispl` string: comma-separated KEY=VALUE settings, as xl_parse.c reads them.

    `backend` is a domain name from `domains` or a domid; `be-alloc` is 0 or 1.
    """
    backend = default_backend
    be_alloc = False
    connectors: tuple[Connector, ...] = ()
    for name, value in split_settings(spec, key, XL_FORM):
        match name:
            case "backend":
                backend = _backend_domid(value, f"{key}: backend", domains)
            case "be-alloc":
                if value not in ("0", "1"):
                    raise ConfigError(f"{key}: be-alloc", f"{value!r} is not 0 or 1")
                be_alloc = value == "1"
            case "connectors":
                connectors = parse_connectors(value, f"{key}: connectors")
            case other:
                raise ConfigError(
                    key, f"unknown setting {other!r}; expected backend, be-alloc or connectors"
                )
    if not connectors:
        raise ConfigError(key, f"no connectors; expected {XL_FORM}")
    return Vdispl(devid, backend, be_alloc, connectors)


def parse_config(text: str) -> HostConfig:
    """A host config in TOML; ConfigError names the first key that is wrong."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("config", f"not valid TOML ({error})") from None
    _only_keys(document, ("backend", "hypervisor", "xenstored", "web", "guest"), "config")
    backend_table = _table(document.get("backend", {}), "backend")
    _only_keys(
        backend_table,
        ("name", "domid", "copy", "page_budget", "descriptor_budget", "planes_clients"),
        "backend",
    )
    backend = BackendConfig(
        name=_name(backend_table.get("name", "Domain-0"), "backend.name"),
        domid=_domid(backend_table.get("domid", 0), "backend.domid"),
        copy=_bool(backend_table.get("copy", False), "backend.copy"),
        page_budget=_count(
            backend_table.get("page_budget", DEFAULT_PAGE_BUDGET), "backend.page_budget"
        ),
        descriptor_budget=_count(
            backend_table.get("descriptor_budget", DEFAULT_DESCRIPTOR_BUDGET),
            "backend.descriptor_budget",
        ),
        planes_clients=_count(
            backend_table.get("planes_clients", MAX_CLIENTS), "backend.planes_clients"
        ),
    )
    hypervisor_table = _table(document.get("hypervisor", {}), "hypervisor")
    _only_keys(hypervisor_table, HYPERVISOR_KEYS, "hypervisor")
    limits = replace(
        Limits(backend_domid=backend.domid),
        **{name: _count(value, f"hypervisor.{name}") for name, value in hypervisor_table.items()},
    )
    xenstored_table = _table(document.get("xenstored", {}), "xenstored")
    _only_keys(xenstored_table, XENSTORED_KEYS, "xenstored")
    values = {name: _count(value, f"xenstored.{name}") for name, value in xenstored_table.items()}
    try:
        quotas = Quotas(**values)
    except ValueError as error:
        raise ConfigError("xenstored", str(error)) from None
    web_table = _table(document.get("web", {}), "web")
    _only_keys(web_table, ("max_clients",), "web")
    web_clients = _count(web_table.get("max_clients", WEB_MAX_CLIENTS), "web.max_clients")
    guest_list = document.get("guest", [])
    if not isinstance(guest_list, list):
        raise ConfigError("guest", "expected [[guest]] tables")
    domains = {backend.name: backend.domid}
    guests = tuple(
        _guest(_table(entry, f"guest[{index}]"), f"guest[{index}]", domains, backend.domid)
        for index, entry in enumerate(guest_list)
    )
    _check_unique([g.name for g in guests], "guest", "name")
    explicit = [g.domid for g in guests if g.domid is not None]
    _check_unique([str(d) for d in explicit], "guest", "domid")
    if backend.domid in explicit:
        raise ConfigError("guest", f"domid {backend.domid} is the backend's")
    return HostConfig(backend, guests, limits, quotas, web_clients)


def check_backends(config: HostConfig) -> None:
    """The emulated host runs one backend, the [backend] domain: a device naming another
    domain would never be served, and its connector would never appear. ConfigError."""
    backend = config.backend
    for index, guest in enumerate(config.guests):
        devices = [("vdispl", d.devid, d.backend_domid) for d in guest.vdispls]
        devices += [("vkb", k.devid, k.backend_domid) for k in guest.vkbs]
        for kind, devid, domid in devices:
            if domid != backend.domid:
                raise ConfigError(
                    f"guest[{index}].{kind}[{devid}]: backend",
                    f"domain {domid} runs no backend here; the backend is domain "
                    f"{backend.domid} ({backend.name!r}): write backend={backend.name} or "
                    "leave it out",
                )


def _guest(table: dict[str, Any], key: str, domains: Mapping[str, int], backend: int) -> Guest:
    _only_keys(table, ("name", "domid", "vdispl", "vkb"), key)
    if "name" not in table:
        raise ConfigError(f"{key}.name", 'missing; expected a name like "guest1"')
    name = _name(table["name"], f"{key}.name")
    domid = _domid(table["domid"], f"{key}.domid") if "domid" in table else None
    if domid == 0:
        raise ConfigError(f"{key}.domid", "0 is dom0; a guest needs 1 or more")
    raw = table.get("vdispl", [])
    items = [raw] if isinstance(raw, str | dict) else raw
    if not isinstance(items, list):
        raise ConfigError(f"{key}.vdispl", f"expected a list of {XL_FORM} strings or tables")
    vdispls = tuple(
        _vdispl(item, devid, f"{key}.vdispl[{devid}]", domains, backend)
        for devid, item in enumerate(items)
    )
    return Guest(name, domid, vdispls, _vkbs(table.get("vkb", []), key, vdispls, domains, backend))


def _vkbs(
    raw: object, key: str, vdispls: Sequence[Vdispl], domains: Mapping[str, int], backend: int
) -> tuple[vkb_config.Vkb, ...]:
    """The guest's `vkb` strings; a unique-id must name one of the guest's connectors."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ConfigError(f"{key}.vkb", f"expected a list of {vkb_config.XL_FORM} strings")
    connectors = [c.unique_id for device in vdispls for c in device.connectors]
    vkbs = []
    for devid, item in enumerate(items):
        item_key = f"{key}.vkb[{devid}]"
        if not isinstance(item, str):
            raise ConfigError(item_key, f"expected a string {vkb_config.XL_FORM}")
        vkb = vkb_config.parse_xl_vkb(item, devid, item_key, domains, backend)
        if vkb.unique_id and vkb.unique_id not in connectors:
            raise ConfigError(
                f"{item_key}.unique-id",
                f"{vkb.unique_id!r} names no connector of this guest ({', '.join(connectors)})",
            )
        vkbs.append(vkb)
    _check_unique([v.unique_id for v in vkbs if v.unique_id], f"{key}.vkb", "unique-id")
    return tuple(vkbs)


def _vdispl(
    item: object, devid: int, key: str, domains: Mapping[str, int], default_backend: int
) -> Vdispl:
    if isinstance(item, str):
        return parse_xl_vdispl(item, devid, key, domains, default_backend)
    table = _table(item, key)
    _only_keys(table, ("backend", "be-alloc", "connectors"), key)
    raw_backend = table.get("backend", default_backend)
    backend = _backend_domid(
        str(raw_backend) if isinstance(raw_backend, int) else raw_backend, f"{key}.backend", domains
    )
    connectors_value = table.get("connectors")
    if isinstance(connectors_value, str):
        connectors = parse_connectors(connectors_value, f"{key}.connectors")
    elif isinstance(connectors_value, list):
        connectors = _checked_connectors(
            [
                connector
                for index, entry in enumerate(connectors_value)
                for connector in _connector_entry(entry, f"{key}.connectors[{index}]")
            ],
            f"{key}.connectors",
        )
    else:
        raise ConfigError(
            f"{key}.connectors", f"expected \"{CONNECTOR_FORM}\" items separated by ';'"
        )
    return Vdispl(
        devid, backend, _bool(table.get("be-alloc", False), f"{key}.be-alloc"), connectors
    )


def _connector_entry(entry: object, key: str) -> tuple[Connector, ...]:
    if isinstance(entry, str):
        return parse_connectors(entry, key)
    table = _table(entry, key)
    _only_keys(table, ("unique-id", "resolution"), key)
    unique_id = table.get("unique-id")
    resolution = table.get("resolution")
    if not isinstance(unique_id, str) or not UNIQUE_ID.fullmatch(unique_id):
        raise ConfigError(f"{key}.unique-id", "expected letters, digits or _.@+- (1-64)")
    match = _RESOLUTION.fullmatch(resolution) if isinstance(resolution, str) else None
    if match is None:
        raise ConfigError(f"{key}.resolution", 'expected WIDTHxHEIGHT, e.g. "1920x1080"')
    return (Connector(unique_id, _dimension(match[1], key), _dimension(match[2], key)),)


def _checked_connectors(connectors: Sequence[Connector], key: str) -> tuple[Connector, ...]:
    if not connectors:
        raise ConfigError(key, f"expected at least one connector, {CONNECTOR_FORM}")
    if len(connectors) > MAX_CONNECTORS:
        raise ConfigError(key, f"{len(connectors)} connectors; at most {MAX_CONNECTORS}")
    _check_unique([c.unique_id for c in connectors], key, "unique-id")
    for connector in connectors:
        # The backend refuses such a mode (the device would go Closing); say so here.
        problem = mode_problem(connector.width, connector.height)
        if problem is not None:
            raise ConfigError(key, f"{connector.unique_id}: {problem}")
    return tuple(connectors)


def _dimension(text: str, key: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_DIMENSION:
        raise ConfigError(key, f"dimension {value} out of range 1..{MAX_DIMENSION}")
    return value


def _backend_domid(value: object, key: str, domains: Mapping[str, int]) -> int:
    if isinstance(value, str) and value in domains:
        return domains[value]
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return _domid(int(value), key)
    names = ", ".join(domains)
    raise ConfigError(key, f"{value!r} is neither a domid nor a known domain ({names})")


def _domid(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 0x7FF0:
        raise ConfigError(key, f"{value!r} is not a domid (an integer 0..32751)")
    return value


def _count(value: object, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(key, f"{value!r} is not a count (an integer, at least 1)")
    return value


def _name(value: object, key: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(key, f"{value!r} is not a name (letters, digits, _.-; 1-64)")
    return value


def _bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise ConfigError(key, f"{value!r} is not true/false or 0/1")


def _table(value: object, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, "expected a table")
    return value


def _only_keys(table: Mapping[str, object], allowed: Sequence[str], key: str) -> None:
    for name in table:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", f"unknown key; expected one of {', '.join(allowed)}")


def _check_unique(values: Sequence[str], key: str, what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigError(key, f"{what} {value!r} appears twice; each must be unique")
        seen.add(value)


# -- nodes ------------------------------------------------------------------------------


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def domain_nodes(domid: int, name: str) -> NodePlan:
    """What libxl__domain_make writes for a new domain (the parts a PV guest reads)."""
    home = domain_path(domid)
    read_only = (Permission(0, Access.NONE), Permission(domid, Access.READ))
    writable = (Permission(domid, Access.NONE),)
    dom0_only = (Permission(0, Access.NONE),)
    writes = [NodeWrite(home, "", read_only), NodeWrite(f"{home}/name", name, read_only)]
    writes.append(NodeWrite(f"{home}/domid", str(domid), read_only))
    if domid != 0:
        writes += [
            NodeWrite(f"{home}/device", "", read_only),
            NodeWrite(f"{home}/control", "", read_only),
            NodeWrite(f"{home}/control/shutdown", "", writable),
            NodeWrite(f"{home}/data", "", writable),
            NodeWrite(f"/libxl/{domid}", "", dom0_only),
            NodeWrite(f"/libxl/{domid}/device", "", dom0_only),
        ]
        return NodePlan((home, f"/libxl/{domid}"), tuple(writes))
    return NodePlan((), tuple(writes))


def vdispl_nodes(frontend_domid: int, device: Vdispl) -> NodePlan:
    """What `xl create` writes for one vdispl device of domain `frontend_domid`.

    The device's directories are laid out as `DeviceDirs` says. In the frontend
    directory, `backend`, `backend-id`, `state` are the guest's; `be-alloc` and the
    connectors' `resolution` and `unique-id` are the toolstack's: owned by the backend
    domain, the guest may only read them (libxl's ro_front). The per-connector
    directories stay the guest's, so it can add its ring refs and event channels.
    """
    dirs = DeviceDirs(KIND, frontend_domid, device.backend_domid, device.devid)
    front, guest_owned, toolstack_owned = dirs.front, dirs.guest_owned, dirs.toolstack_owned
    settings = [
        NodeWrite(f"{front}/{displif.FIELD_BE_ALLOC}", str(int(device.be_alloc)), toolstack_owned)
    ]
    for index, connector in enumerate(device.connectors):
        resolution = displif.format_resolution(connector.width, connector.height)
        settings += [
            NodeWrite(f"{front}/{index}", "", guest_owned),
            NodeWrite(f"{front}/{index}/{displif.FIELD_RESOLUTION}", resolution, toolstack_owned),
            NodeWrite(
                f"{front}/{index}/{displif.FIELD_UNIQUE_ID}", connector.unique_id, toolstack_owned
            ),
        ]
    return dirs.plan(front_settings=settings)


def guest_teardown_paths(
    frontend_domid: int, devices: Sequence[Vdispl], vkbs: Sequence[vkb_config.Vkb] = ()
) -> tuple[str, ...]:
    """What libxl removes once a guest is gone: its devices' directories and its home."""
    paths: list[str] = []
    kinds: list[tuple[str, Vdispl | vkb_config.Vkb]] = [(KIND, d) for d in devices]
    kinds += [(vkb_config.KIND, v) for v in vkbs]
    for kind, device in kinds:
        dirs = DeviceDirs(
            kind, frontend_domid, device.backend_domid, device.devid, device.backend_kind
        )
        paths += [dirs.back, dirs.front]
    paths += [f"/libxl/{frontend_domid}", domain_path(frontend_domid)]
    return tuple(paths)
