"""Input as outputs produce it, in the guest connector's pixel coordinates.

Outputs (web viewer, VNC, window) translate what people do into these events and
send them to the display backend, which forwards them to the kbdif device bound to
that connector. Key codes are Linux input codes (KEY_*, BTN_*), as kbdif carries them.
"""

import errno
from dataclasses import asdict, dataclass
from dataclasses import fields as fields_of
from typing import Any, ClassVar

from pvdisplay.wire.errors import ProtocolError


@dataclass(frozen=True)
class Key:
    """A key or button (BTN_LEFT is 0x110) going down or up."""

    kind: ClassVar[str] = "key"
    code: int
    pressed: bool


@dataclass(frozen=True)
class PointerMove:
    """The absolute pointer moved to (x, y)."""

    kind: ClassVar[str] = "pointer"
    x: int
    y: int


@dataclass(frozen=True)
class Wheel:
    """Wheel steps: positive is away from the user, as REL_WHEEL."""

    kind: ClassVar[str] = "wheel"
    steps: int


@dataclass(frozen=True)
class TouchDown:
    kind: ClassVar[str] = "touch-down"
    contact: int
    x: int
    y: int


@dataclass(frozen=True)
class TouchMove:
    kind: ClassVar[str] = "touch-move"
    contact: int
    x: int
    y: int


@dataclass(frozen=True)
class TouchUp:
    kind: ClassVar[str] = "touch-up"
    contact: int


InputEvent = Key | PointerMove | Wheel | TouchDown | TouchMove | TouchUp

_KINDS: dict[str, type[InputEvent]] = {
    cls.kind: cls for cls in (Key, PointerMove, Wheel, TouchDown, TouchMove, TouchUp)
}


def to_json(event: InputEvent) -> dict[str, Any]:
    return {"type": event.kind, **asdict(event)}


def from_json(data: object) -> InputEvent:
    """Decode one event from a local client; bad input is EINVAL, never a crash."""
    if not isinstance(data, dict):
        raise ProtocolError(errno.EINVAL, "input event is not an object")
    fields = {name: value for name, value in data.items() if name != "type"}
    cls = _KINDS.get(str(data.get("type")))
    if cls is None:
        raise ProtocolError(errno.EINVAL, f"unknown input event type {data.get('type')!r}")
    expected = {field.name for field in fields_of(cls)}
    if set(fields) != expected:
        raise ProtocolError(errno.EINVAL, f"{cls.kind} event needs fields {sorted(expected)}")
    for name, value in fields.items():
        wanted = bool if name == "pressed" else int
        if type(value) is not wanted or (wanted is int and not -(2**31) <= value < 2**31):
            raise ProtocolError(
                errno.EINVAL, f"{cls.kind}.{name} must be a 32-bit {wanted.__name__}"
            )
    return cls(**fields)


MAX_INPUT_EVENTS = 256


@dataclass(frozen=True)
class InputReceipt:
    """The backend's answer to an "input" op.

    `queued`: kbdif events the call produced (on the guest's ring or waiting for room);
    `dropped`: events this vkbd device has dropped since it connected because its guest
    did not consume them in time (pointer motion first, never a release: docs/input.md).
    """

    queued: int
    dropped: int
