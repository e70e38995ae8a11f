"""Browser `KeyboardEvent.code` values to Linux input key codes (KEY_*), as kbdif carries them.

`code` names the physical key (US layout positions), not the character, which is what a
guest keyboard driver wants: the guest applies its own layout. Each entry names the
Linux constant so a test can check the number against `linux/input-event-codes.h`.
"""

from typing import Final

_LETTERS = dict(zip("QWERTYUIOP", range(16, 26), strict=True))
_LETTERS |= dict(zip("ASDFGHJKL", range(30, 39), strict=True))
_LETTERS |= dict(zip("ZXCVBNM", range(44, 51), strict=True))

KEY_TABLE: Final[tuple[tuple[str, str, int], ...]] = (
    *((f"Key{letter}", f"KEY_{letter}", code) for letter, code in sorted(_LETTERS.items())),
    *((f"Digit{digit}", f"KEY_{digit}", 2 + (digit - 1) % 10) for digit in range(10)),
    *((f"F{n}", f"KEY_F{n}", 58 + n) for n in range(1, 11)),
    ("F11", "KEY_F11", 87),
    ("F12", "KEY_F12", 88),
    *((f"F{n}", f"KEY_F{n}", 170 + n) for n in range(13, 25)),
    ("Escape", "KEY_ESC", 1),
    ("Minus", "KEY_MINUS", 12),
    ("Equal", "KEY_EQUAL", 13),
    ("Backspace", "KEY_BACKSPACE", 14),
    ("Tab", "KEY_TAB", 15),
    ("BracketLeft", "KEY_LEFTBRACE", 26),
    ("BracketRight", "KEY_RIGHTBRACE", 27),
    ("Enter", "KEY_ENTER", 28),
    ("ControlLeft", "KEY_LEFTCTRL", 29),
    ("Semicolon", "KEY_SEMICOLON", 39),
    ("Quote", "KEY_APOSTROPHE", 40),
    ("Backquote", "KEY_GRAVE", 41),
    ("ShiftLeft", "KEY_LEFTSHIFT", 42),
    ("Backslash", "KEY_BACKSLASH", 43),
    ("Comma", "KEY_COMMA", 51),
    ("Period", "KEY_DOT", 52),
    ("Slash", "KEY_SLASH", 53),
    ("ShiftRight", "KEY_RIGHTSHIFT", 54),
    ("NumpadMultiply", "KEY_KPASTERISK", 55),
    ("AltLeft", "KEY_LEFTALT", 56),
    ("Space", "KEY_SPACE", 57),
    ("CapsLock", "KEY_CAPSLOCK", 58),
    ("NumLock", "KEY_NUMLOCK", 69),
    ("ScrollLock", "KEY_SCROLLLOCK", 70),
    ("Numpad7", "KEY_KP7", 71),
    ("Numpad8", "KEY_KP8", 72),
    ("Numpad9", "KEY_KP9", 73),
    ("NumpadSubtract", "KEY_KPMINUS", 74),
    ("Numpad4", "KEY_KP4", 75),
    ("Numpad5", "KEY_KP5", 76),
    ("Numpad6", "KEY_KP6", 77),
    ("NumpadAdd", "KEY_KPPLUS", 78),
    ("Numpad1", "KEY_KP1", 79),
    ("Numpad2", "KEY_KP2", 80),
    ("Numpad3", "KEY_KP3", 81),
    ("Numpad0", "KEY_KP0", 82),
    ("NumpadDecimal", "KEY_KPDOT", 83),
    ("IntlBackslash", "KEY_102ND", 86),
    ("IntlRo", "KEY_RO", 89),
    ("NumpadEnter", "KEY_KPENTER", 96),
    ("ControlRight", "KEY_RIGHTCTRL", 97),
    ("NumpadDivide", "KEY_KPSLASH", 98),
    ("PrintScreen", "KEY_SYSRQ", 99),
    ("AltRight", "KEY_RIGHTALT", 100),
    ("Home", "KEY_HOME", 102),
    ("ArrowUp", "KEY_UP", 103),
    ("PageUp", "KEY_PAGEUP", 104),
    ("ArrowLeft", "KEY_LEFT", 105),
    ("ArrowRight", "KEY_RIGHT", 106),
    ("End", "KEY_END", 107),
    ("ArrowDown", "KEY_DOWN", 108),
    ("PageDown", "KEY_PAGEDOWN", 109),
    ("Insert", "KEY_INSERT", 110),
    ("Delete", "KEY_DELETE", 111),
    ("AudioVolumeMute", "KEY_MUTE", 113),
    ("AudioVolumeDown", "KEY_VOLUMEDOWN", 114),
    ("AudioVolumeUp", "KEY_VOLUMEUP", 115),
    ("Power", "KEY_POWER", 116),
    ("NumpadEqual", "KEY_KPEQUAL", 117),
    ("Pause", "KEY_PAUSE", 119),
    ("NumpadComma", "KEY_KPCOMMA", 121),
    ("IntlYen", "KEY_YEN", 124),
    ("MetaLeft", "KEY_LEFTMETA", 125),
    ("MetaRight", "KEY_RIGHTMETA", 126),
    ("ContextMenu", "KEY_COMPOSE", 127),
)

LINUX_KEYS: Final[dict[str, int]] = {code: value for code, _, value in KEY_TABLE}
"""`KeyboardEvent.code` -> Linux key code."""

# MouseEvent.button (0 main, 1 middle, 2 secondary, 3 back, 4 forward) -> BTN_*.
BUTTON_TABLE: Final[tuple[tuple[int, str, int], ...]] = (
    (0, "BTN_LEFT", 0x110),
    (1, "BTN_MIDDLE", 0x112),
    (2, "BTN_RIGHT", 0x111),
    (3, "BTN_SIDE", 0x113),
    (4, "BTN_EXTRA", 0x114),
)

LINUX_BUTTONS: Final[dict[int, int]] = {button: value for button, _, value in BUTTON_TABLE}
