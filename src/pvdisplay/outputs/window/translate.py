"""What people do in the window, as guest input events (sans-IO).

Positions arrive in window pixels; the guest picture is scaled into the window keeping
its aspect ratio (`Viewport`), so every position is mapped back to guest connector
pixels and clamped into the picture, whatever the window's size. Touch positions
arrive as SDL gives them, as fractions (0..1) of the window.

`InputTranslator` keeps what must stay consistent for the guest: which keys and buttons
it believes are down (so a press and its release pair up, and leaving the window lets
go of everything), the last pointer position sent, and which contact slot (0, 1, ... as
kbdif multi-touch numbers them) each finger holds while it touches.
"""

import math
from dataclasses import dataclass, field
from typing import Final

from pvdisplay.outputs.window.keys import LINUX_BUTTONS, LINUX_KEYS
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

MAX_CONTACTS: Final = 10
MAX_WHEEL_STEPS: Final = 100


@dataclass(frozen=True)
class Viewport:
    """The guest's picture, `guest_width`x`guest_height` pixels placed at (`guest_x`,
    `guest_y`) on its connector, scaled to fit a `window_width`x`window_height` window with
    its aspect ratio kept, centred (bars left and right, or above and below)."""

    window_width: int
    window_height: int
    guest_width: int
    guest_height: int
    guest_x: int = 0
    guest_y: int = 0

    @property
    def rect(self) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the picture in the window; at least 1x1."""
        scale = min(self.window_width / self.guest_width, self.window_height / self.guest_height)
        width = max(1, min(self.window_width, round(self.guest_width * scale)))
        height = max(1, min(self.window_height, round(self.guest_height * scale)))
        return (self.window_width - width) // 2, (self.window_height - height) // 2, width, height

    def to_guest(self, x: float, y: float) -> tuple[int, int]:
        """The connector pixel under window position (x, y), clamped into the picture."""
        left, top, width, height = self.rect
        column = _index((x - left) * self.guest_width / width, self.guest_width)
        row = _index((y - top) * self.guest_height / height, self.guest_height)
        return self.guest_x + column, self.guest_y + row


def _index(position: float, count: int) -> int:
    """The cell 0..count-1 at `position`; outside (or not a number) the nearest edge's."""
    if not position >= 0:  # negative or NaN
        return 0
    return math.floor(min(position, count - 1))


@dataclass
class InputTranslator:
    """SDL input, as plain values, to `pvdisplay.planes.input_events` for one connector."""

    viewport: Viewport
    _keys: set[int] = field(default_factory=set)  # Linux codes held, buttons included
    _contacts: ContactSlots[tuple[int, int]] = field(  # by (touch device, finger)
        default_factory=lambda: ContactSlots(MAX_CONTACTS)
    )
    _pointer: tuple[int, int] | None = None

    def key(self, scancode: int, pressed: bool) -> list[InputEvent]:
        """A key went down or up; keys the guest has no code for are ignored."""
        code = LINUX_KEYS.get(scancode)
        return [] if code is None else self._press(code, pressed)

    def motion(self, x: float, y: float) -> list[InputEvent]:
        """The mouse is at window position (x, y); nothing if that is the guest pixel sent last."""
        position = self.viewport.to_guest(x, y)
        if position == self._pointer:
            return []
        self._pointer = position
        return [PointerMove(*position)]

    def button(self, button: int, pressed: bool, x: float, y: float) -> list[InputEvent]:
        """A mouse button at window position (x, y): the position if it moved, then the button."""
        code = LINUX_BUTTONS.get(button)
        if code is None:
            return []
        pressing = self._press(code, pressed)
        return [*self.motion(x, y), *pressing] if pressing else []

    def wheel(self, steps: int, flipped: bool) -> list[InputEvent]:
        """Wheel notches as SDL counts them (positive: away from the user unless `flipped`)."""
        steps = max(-MAX_WHEEL_STEPS, min(MAX_WHEEL_STEPS, -steps if flipped else steps))
        return [Wheel(steps)] if steps else []

    def finger_down(self, touch: int, finger: int, fx: float, fy: float) -> list[InputEvent]:
        """A finger touched; beyond `MAX_CONTACTS` fingers the extra ones are ignored."""
        contact = self._contacts.touch((touch, finger))
        return [] if contact is None else [TouchDown(contact, *self._finger_position(fx, fy))]

    def finger_move(self, touch: int, finger: int, fx: float, fy: float) -> list[InputEvent]:
        contact = self._contacts.slot((touch, finger))
        return [] if contact is None else [TouchMove(contact, *self._finger_position(fx, fy))]

    def finger_up(self, touch: int, finger: int) -> list[InputEvent]:
        contact = self._contacts.lift((touch, finger))
        return [] if contact is None else [TouchUp(contact)]

    def release_all(self) -> list[InputEvent]:
        """Let go of every key, button and finger (the window lost focus or the mouse)."""
        events: list[InputEvent] = [Key(code, False) for code in sorted(self._keys)]
        events += [TouchUp(contact) for contact in self._contacts.lift_all()]
        self._keys.clear()
        return events

    def _press(self, code: int, pressed: bool) -> list[InputEvent]:
        # A press the guest already has, or a release of one it never saw, is not sent:
        # keys grabbed before the window had focus stay the desktop's.
        if pressed == (code in self._keys):
            return []
        if pressed:
            self._keys.add(code)
        else:
            self._keys.discard(code)
        return [Key(code, pressed)]

    def _finger_position(self, fx: float, fy: float) -> tuple[int, int]:
        return self.viewport.to_guest(
            fx * self.viewport.window_width, fy * self.viewport.window_height
        )
