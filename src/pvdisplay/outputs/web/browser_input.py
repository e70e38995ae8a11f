"""What the page sends about keys, mouse, wheel and touch, as guest input events.

The page converts every position to the guest connector's pixels (it knows the canvas
scale); this decoder checks each message, clamps positions into the connector, maps
key codes and buttons to Linux codes, and gives each touching pointer a contact slot
(0, 1, ... as kbdif multi-touch numbers them) for as long as it touches. It remembers
which keys, buttons and contacts the page holds down, so that they can be let go of
when the page loses focus (a "release" message) or goes away (`release_all`): the guest
would otherwise keep them held.

Messages (JSON objects from the page), in a list under "events":

- `{"t": "key", "code": KeyboardEvent.code, "down": bool}` (unknown codes are ignored)
- `{"t": "move", "x": X, "y": Y}`
- `{"t": "button", "button": MouseEvent.button, "down": bool, "x": X, "y": Y}`
- `{"t": "wheel", "steps": N}` (positive: away from the user)
- `{"t": "touch", "phase": "down" | "move" | "up", "id": PointerEvent.pointerId, "x": X, "y": Y}`
- `{"t": "release"}`: let go of every key, button and contact held (the page lost focus)
"""

import errno
import math
from collections.abc import Mapping
from typing import Final

from pvdisplay.outputs.web.keys import LINUX_BUTTONS, LINUX_KEYS
from pvdisplay.planes.contacts import ContactSlots
from pvdisplay.planes.input_events import (
    InputEvent,
    Key,
    PointerMove,
    TouchDown,
    TouchMove,
    TouchUp,
    Wheel,
)
from pvdisplay.wire.errors import ProtocolError

MAX_CONTACTS: Final = 10
MAX_EVENTS: Final = 256
MAX_WHEEL_STEPS: Final = 100


class BrowserInput:
    """Decodes one page's input for a `width`x`height` connector (call `resize` on a new mode)."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self._contacts = ContactSlots[int](MAX_CONTACTS)  # by pointerId
        self._held: set[int] = set()  # Linux key and button codes down

    def resize(self, width: int, height: int) -> None:
        self.width = width
        self.height = height

    def decode(self, message: Mapping[str, object]) -> list[InputEvent]:
        """The guest events for one `{"events": [...]}` message; ProtocolError(EINVAL) if
        it is malformed (then nothing of it is used)."""
        items = message.get("events")
        if not isinstance(items, list) or len(items) > MAX_EVENTS:
            raise ProtocolError(errno.EINVAL, f"events must be a list of at most {MAX_EVENTS}")
        contacts, held = self._contacts.copy(), set(self._held)
        events: list[InputEvent] = []
        for item in items:
            if not isinstance(item, dict):
                raise ProtocolError(errno.EINVAL, "an input event is not an object")
            events.extend(self._decode_one(item, contacts, held))
        self._contacts, self._held = contacts, held
        return events

    def release_all(self) -> list[InputEvent]:
        """Let go of every key, button and contact the page holds (it went away)."""
        return _release(self._contacts, self._held)

    def _decode_one(
        self, item: Mapping[str, object], contacts: ContactSlots[int], held: set[int]
    ) -> list[InputEvent]:
        kind = item.get("t")
        if kind == "key":
            code = LINUX_KEYS.get(_text(item, "code"))
            return [] if code is None else [_press(held, code, _flag(item, "down"))]
        if kind == "move":
            return [PointerMove(*self._position(item))]
        if kind == "button":
            button = LINUX_BUTTONS.get(_integer(item, "button"))
            if button is None:
                return []
            return [PointerMove(*self._position(item)), _press(held, button, _flag(item, "down"))]
        if kind == "wheel":
            steps = max(-MAX_WHEEL_STEPS, min(MAX_WHEEL_STEPS, _integer(item, "steps")))
            return [Wheel(steps)] if steps else []
        if kind == "touch":
            return self._touch(item, contacts)
        if kind == "release":
            return _release(contacts, held)
        raise ProtocolError(errno.EINVAL, f"unknown input event {kind!r}")

    def _touch(self, item: Mapping[str, object], contacts: ContactSlots[int]) -> list[InputEvent]:
        phase, pointer = _text(item, "phase"), _integer(item, "id")
        if phase == "down":
            contact = contacts.touch(pointer)
            return [] if contact is None else [TouchDown(contact, *self._position(item))]
        if phase == "move":
            contact = contacts.slot(pointer)
            return [] if contact is None else [TouchMove(contact, *self._position(item))]
        if phase == "up":
            contact = contacts.lift(pointer)
            return [] if contact is None else [TouchUp(contact)]
        raise ProtocolError(errno.EINVAL, f"unknown touch phase {phase!r}")

    def _position(self, item: Mapping[str, object]) -> tuple[int, int]:
        x, y = _number(item, "x"), _number(item, "y")
        return (
            min(max(math.floor(x), 0), self.width - 1),
            min(max(math.floor(y), 0), self.height - 1),
        )


def _press(held: set[int], code: int, down: bool) -> Key:
    if down:
        held.add(code)
    else:
        held.discard(code)
    return Key(code, down)


def _release(contacts: ContactSlots[int], held: set[int]) -> list[InputEvent]:
    """Key and button releases, then touch ups, for everything held; nothing is held after."""
    events: list[InputEvent] = [Key(code, False) for code in sorted(held)]
    events += [TouchUp(contact) for contact in contacts.lift_all()]
    held.clear()
    return events


def _text(item: Mapping[str, object], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise ProtocolError(errno.EINVAL, f"{name} must be a string")
    return value


def _flag(item: Mapping[str, object], name: str) -> bool:
    value = item.get(name)
    if not isinstance(value, bool):
        raise ProtocolError(errno.EINVAL, f"{name} must be true or false")
    return value


def _integer(item: Mapping[str, object], name: str) -> int:
    value = item.get(name)
    if type(value) is not int or not -(2**31) <= value < 2**31:
        raise ProtocolError(errno.EINVAL, f"{name} must be a 32-bit integer")
    return value


def _number(item: Mapping[str, object], name: str) -> float:
    value = item.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(errno.EINVAL, f"{name} must be a finite number")
    return float(value)
