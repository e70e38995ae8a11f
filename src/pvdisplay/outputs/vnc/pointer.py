"""RFB KeyEvents and PointerEvents as `pvdisplay.planes.input_events` for the guest's kbdif.

A PointerEvent carries the whole button mask and position each time; the guest wants
changes: a move when the position changed, a BTN_* key per button that went down or
up, and one wheel step per press of button 4 (up, away from the user) or 5 (down).
Buttons 6 and 7 (horizontal wheel) have no kbdif counterpart and are dropped.
"""

from typing import Final

from pvdisplay.outputs.vnc import keysyms, rfb
from pvdisplay.planes.input_events import InputEvent, Key, PointerMove, Wheel

# RFB button mask bit -> Linux button: 1 left, 2 middle, 3 right.
BUTTONS: Final = (
    (0, keysyms.LINUX_CODES["BTN_LEFT"]),
    (1, keysyms.LINUX_CODES["BTN_MIDDLE"]),
    (2, keysyms.LINUX_CODES["BTN_RIGHT"]),
)
WHEEL_STEPS: Final = ((3, 1), (4, -1))


class InputTranslator:
    """One client's input, translated; remembers the last pointer state it saw."""

    def __init__(self) -> None:
        self._buttons = 0
        self._position: tuple[int, int] | None = None

    def key(self, event: rfb.KeyEvent) -> list[InputEvent]:
        code = keysyms.linux_code(event.keysym)
        return [] if code is None else [Key(code, event.down)]

    def pointer(self, event: rfb.PointerEvent) -> list[InputEvent]:
        events: list[InputEvent] = []
        if (event.x, event.y) != self._position:
            self._position = (event.x, event.y)
            events.append(PointerMove(event.x, event.y))
        changed = event.buttons ^ self._buttons
        for bit, code in BUTTONS:
            if changed & (1 << bit):
                events.append(Key(code, bool(event.buttons & (1 << bit))))
        for bit, steps in WHEEL_STEPS:
            if changed & event.buttons & (1 << bit):
                events.append(Wheel(steps))
        self._buttons = event.buttons
        return events
