"""The toolstack's share of PV input: xl.cfg `vkb` strings in, XenStore node writes out.

    vkb = ['backend=0,feature-abs-pointer=1,feature-multi-touch=1,unique-id=id0']

`parse_xl_vkb` reads one string as xl_parse.c does; `vkb_nodes` gives the writes
`xl create` makes for the device (libxl_device.c `libxl__device_generic_add`,
libxl_vkb.c `libxl__set_xenstore_vkb`), as a `NodePlan` to apply in one transaction.
The device binds to the display connector with the same `unique-id`: the pointer's
`width`/`height` and the touch surface default to that connector's resolution (for a
device without a `unique-id`, the guest's first connector's), and are always written with
the device, before its frontend can probe.

`toolstack` reads the config file's `vkb` lists with this module, so this module depends
only on the vocabulary the two share (`pvdisplay.toolstack.xl_syntax`).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pvdisplay import xenbus
from pvdisplay.display.limits import MAX_DIMENSION, UNIQUE_ID, UNIQUE_ID_FORM
from pvdisplay.input.limits import DEFAULT_CONTACTS, DEFAULT_RESOLUTION, MAX_CONTACTS
from pvdisplay.toolstack.xl_syntax import (
    ConfigError,
    DeviceDirs,
    NodePlan,
    Vdispl,
    split_settings,
)
from pvdisplay.wire import kbdif

KIND = kbdif.DRIVER_NAME
XL_FORM = (
    "'backend=DOMAIN,backend-type=qemu|linux,unique-id=ID,feature-abs-pointer=0|1,"
    "feature-multi-touch=0|1,"
    "multi-touch-width=W,multi-touch-height=H,multi-touch-num-contacts=N,width=W,height=H'"
)

_FLAGS = {
    "feature-disable-keyboard": kbdif.FIELD_FEAT_DSBL_KEYBRD,
    "feature-disable-pointer": kbdif.FIELD_FEAT_DSBL_POINTER,
    "feature-abs-pointer": kbdif.FIELD_FEAT_ABS_POINTER,
    "feature-raw-pointer": kbdif.FIELD_FEAT_RAW_POINTER,
    "feature-multi-touch": kbdif.FIELD_FEAT_MTOUCH,
}
_NUMBERS = (
    "width",
    "height",
    "multi-touch-width",
    "multi-touch-height",
    "multi-touch-num-contacts",
)


@dataclass(frozen=True)
class Vkb:
    """One PV input device, as libxl_device_vkb describes it (0 = not set)."""

    devid: int
    backend_domid: int
    unique_id: str = ""
    disable_keyboard: bool = False
    disable_pointer: bool = False
    abs_pointer: bool = False
    raw_pointer: bool = False
    multi_touch: bool = False
    width: int = 0
    height: int = 0
    mt_width: int = 0
    mt_height: int = 0
    mt_contacts: int = 0
    linux_backend: bool = False
    """`backend-type=linux`: served by a backend in a Linux domain, under libxl's vinput."""

    @property
    def backend_kind(self) -> str:
        return xenbus.VINPUT if self.linux_backend else KIND


def parse_xl_vkb(
    text: str, devid: int, key: str, domains: Mapping[str, int], default_backend: int
) -> Vkb:
    """One xl.cfg `vkb` string; `backend=` takes a domid or a name from `domains`."""
    values: dict[str, str] = {}
    for name, value in split_settings(text, key, XL_FORM):
        if name not in ("backend", "backend-type", "unique-id", *_FLAGS, *_NUMBERS):
            raise ConfigError(f"{key}.{name}", f"unknown vkb setting; expected {XL_FORM}")
        if name in values:
            raise ConfigError(f"{key}.{name}", "given twice")
        values[name] = value
    backend = default_backend
    if "backend" in values:
        text_backend = values["backend"]
        if text_backend.isdigit() and int(text_backend) < 0x7FF0:
            backend = int(text_backend)
        elif text_backend in domains:
            backend = domains[text_backend]
        else:
            raise ConfigError(f"{key}.backend", f"{text_backend!r} is not a domid or domain name")
    backend_type = values.get("backend-type", "qemu")
    if backend_type not in ("qemu", "linux"):
        raise ConfigError(f"{key}.backend-type", f"{backend_type!r} is not qemu or linux")
    unique_id = values.get("unique-id", "")
    if unique_id and not UNIQUE_ID.fullmatch(unique_id):
        raise ConfigError(f"{key}.unique-id", f"{unique_id!r} is not {UNIQUE_ID_FORM}")
    flags = {name: _flag(values.get(name, "0"), f"{key}.{name}") for name in _FLAGS}
    numbers = {name: _number(values.get(name, "0"), f"{key}.{name}") for name in _NUMBERS}
    if flags["feature-raw-pointer"] and not flags["feature-abs-pointer"]:
        raise ConfigError(
            f"{key}.feature-raw-pointer",
            "raw pointer positions are absolute; add feature-abs-pointer=1",
        )
    if numbers["multi-touch-num-contacts"] > MAX_CONTACTS:
        raise ConfigError(f"{key}.multi-touch-num-contacts", f"at most {MAX_CONTACTS}")
    return Vkb(
        devid,
        backend,
        unique_id,
        flags["feature-disable-keyboard"],
        flags["feature-disable-pointer"],
        flags["feature-abs-pointer"],
        flags["feature-raw-pointer"],
        flags["feature-multi-touch"],
        numbers["width"],
        numbers["height"],
        numbers["multi-touch-width"],
        numbers["multi-touch-height"],
        numbers["multi-touch-num-contacts"],
        backend_type == "linux",
    )


def _flag(value: str, key: str) -> bool:
    if value not in ("0", "1"):
        raise ConfigError(key, f"{value!r} is not 0 or 1")
    return value == "1"


def _number(value: str, key: str) -> int:
    if not value.isdigit() or int(value) > MAX_DIMENSION:
        raise ConfigError(key, f"{value!r} is not a number 0..{MAX_DIMENSION}")
    return int(value)


def device_resolution(device: Vkb, vdispls: Sequence[Vdispl]) -> tuple[int, int]:
    """The resolution the device's unset sizes take: its bound connector's, else (no
    unique-id) the guest's first connector's, else `DEFAULT_RESOLUTION`.

    The backend routes input for a connector without a vkb of its own to the vkb without
    a unique-id, and the demo guest draws that vkb on its first connector.
    """
    connectors = [connector for vdispl in vdispls for connector in vdispl.connectors]
    bound = [c for c in connectors if device.unique_id and c.unique_id == device.unique_id]
    chosen = (bound or connectors)[:1]
    return (chosen[0].width, chosen[0].height) if chosen else DEFAULT_RESOLUTION


def backend_entries(device: Vkb, vdispls: Sequence[Vdispl]) -> list[tuple[str, str]]:
    """The device's settings as libxl writes them into the backend directory.

    Unset sizes default to `device_resolution`, so a frontend probing the device never
    reads a zero or missing size; multi-touch without a contact count gets
    `DEFAULT_CONTACTS`.
    """
    width, height = device_resolution(device, vdispls)
    entries: list[tuple[str, str]] = []
    if device.unique_id:
        entries.append((kbdif.FIELD_UNIQUE_ID, device.unique_id))
    for enabled, field in (
        (device.disable_keyboard, kbdif.FIELD_FEAT_DSBL_KEYBRD),
        (device.disable_pointer, kbdif.FIELD_FEAT_DSBL_POINTER),
        (device.abs_pointer, kbdif.FIELD_FEAT_ABS_POINTER),
        (device.raw_pointer, kbdif.FIELD_FEAT_RAW_POINTER),
    ):
        if enabled:
            entries.append((field, "1"))
    if device.multi_touch:
        entries += [
            (kbdif.FIELD_FEAT_MTOUCH, "1"),
            (kbdif.FIELD_MT_WIDTH, str(device.mt_width or width)),
            (kbdif.FIELD_MT_HEIGHT, str(device.mt_height or height)),
            (kbdif.FIELD_MT_NUM_CONTACTS, str(device.mt_contacts or DEFAULT_CONTACTS)),
        ]
    entries += [
        (kbdif.FIELD_WIDTH, str(device.width or width)),
        (kbdif.FIELD_HEIGHT, str(device.height or height)),
    ]
    return entries


def vkb_nodes(frontend_domid: int, device: Vkb, vdispls: Sequence[Vdispl] = ()) -> NodePlan:
    """What `xl create` writes for one vkb device of domain `frontend_domid`.

    Pass the guest's vdispl devices so the device's sizes default to its bound
    connector. The directories are laid out as `DeviceDirs` says; the settings go
    in the backend directory.
    """
    dirs = DeviceDirs(KIND, frontend_domid, device.backend_domid, device.devid, device.backend_kind)
    return dirs.plan(back_settings=backend_entries(device, vdispls))
