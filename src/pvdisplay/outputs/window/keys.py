"""SDL scancodes to Linux input key codes (KEY_*), and SDL mouse buttons to BTN_*.

Scancodes name the physical key (USB HID usage ids, US layout positions), not the
character: the guest applies its own layout, as it would to a USB keyboard. The table
follows the kernel's HID keyboard map (drivers/hid/hid-input.c). Each entry names the SDL
and Linux constants so a test can check both numbers (pygame's `KSCAN_*` are SDL's values,
`linux/input-event-codes.h` compiled with gcc for the Linux side).
"""

from typing import Final

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# KEY_A .. KEY_Z: the kernel numbers them by position on the keyboard, not alphabetically.
_LETTER_CODES = (
    *(30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38, 50),
    *(49, 24, 25, 16, 19, 31, 20, 22, 47, 17, 45, 21, 44),
)
_KEYPAD_DIGITS = (82, 79, 80, 81, 75, 76, 77, 71, 72, 73)  # KEY_KP0 .. KEY_KP9

# (SDL_SCANCODE_ suffix, SDL scancode, Linux name, Linux code)
SCANCODE_TABLE: Final[tuple[tuple[str, int, str, int], ...]] = (
    *((letter, 4 + i, f"KEY_{letter}", _LETTER_CODES[i]) for i, letter in enumerate(_LETTERS)),
    *((str(digit), 29 + digit, f"KEY_{digit}", 1 + digit) for digit in range(1, 10)),
    ("0", 39, "KEY_0", 11),
    ("RETURN", 40, "KEY_ENTER", 28),
    ("ESCAPE", 41, "KEY_ESC", 1),
    ("BACKSPACE", 42, "KEY_BACKSPACE", 14),
    ("TAB", 43, "KEY_TAB", 15),
    ("SPACE", 44, "KEY_SPACE", 57),
    ("MINUS", 45, "KEY_MINUS", 12),
    ("EQUALS", 46, "KEY_EQUAL", 13),
    ("LEFTBRACKET", 47, "KEY_LEFTBRACE", 26),
    ("RIGHTBRACKET", 48, "KEY_RIGHTBRACE", 27),
    ("BACKSLASH", 49, "KEY_BACKSLASH", 43),
    ("NONUSHASH", 50, "KEY_BACKSLASH", 43),
    ("SEMICOLON", 51, "KEY_SEMICOLON", 39),
    ("APOSTROPHE", 52, "KEY_APOSTROPHE", 40),
    ("GRAVE", 53, "KEY_GRAVE", 41),
    ("COMMA", 54, "KEY_COMMA", 51),
    ("PERIOD", 55, "KEY_DOT", 52),
    ("SLASH", 56, "KEY_SLASH", 53),
    ("CAPSLOCK", 57, "KEY_CAPSLOCK", 58),
    *((f"F{n}", 57 + n, f"KEY_F{n}", 58 + n) for n in range(1, 11)),
    ("F11", 68, "KEY_F11", 87),
    ("F12", 69, "KEY_F12", 88),
    ("PRINTSCREEN", 70, "KEY_SYSRQ", 99),
    ("SCROLLLOCK", 71, "KEY_SCROLLLOCK", 70),
    ("PAUSE", 72, "KEY_PAUSE", 119),
    ("INSERT", 73, "KEY_INSERT", 110),
    ("HOME", 74, "KEY_HOME", 102),
    ("PAGEUP", 75, "KEY_PAGEUP", 104),
    ("DELETE", 76, "KEY_DELETE", 111),
    ("END", 77, "KEY_END", 107),
    ("PAGEDOWN", 78, "KEY_PAGEDOWN", 109),
    ("RIGHT", 79, "KEY_RIGHT", 106),
    ("LEFT", 80, "KEY_LEFT", 105),
    ("DOWN", 81, "KEY_DOWN", 108),
    ("UP", 82, "KEY_UP", 103),
    ("NUMLOCKCLEAR", 83, "KEY_NUMLOCK", 69),
    ("KP_DIVIDE", 84, "KEY_KPSLASH", 98),
    ("KP_MULTIPLY", 85, "KEY_KPASTERISK", 55),
    ("KP_MINUS", 86, "KEY_KPMINUS", 74),
    ("KP_PLUS", 87, "KEY_KPPLUS", 78),
    ("KP_ENTER", 88, "KEY_KPENTER", 96),
    *((f"KP_{d}", 88 + d, f"KEY_KP{d}", _KEYPAD_DIGITS[d]) for d in range(1, 10)),
    ("KP_0", 98, "KEY_KP0", 82),
    ("KP_PERIOD", 99, "KEY_KPDOT", 83),
    ("NONUSBACKSLASH", 100, "KEY_102ND", 86),
    ("APPLICATION", 101, "KEY_COMPOSE", 127),
    ("POWER", 102, "KEY_POWER", 116),
    ("KP_EQUALS", 103, "KEY_KPEQUAL", 117),
    *((f"F{n}", 91 + n, f"KEY_F{n}", 170 + n) for n in range(13, 25)),
    ("MUTE", 127, "KEY_MUTE", 113),
    ("VOLUMEUP", 128, "KEY_VOLUMEUP", 115),
    ("VOLUMEDOWN", 129, "KEY_VOLUMEDOWN", 114),
    ("KP_COMMA", 133, "KEY_KPCOMMA", 121),
    ("INTERNATIONAL1", 135, "KEY_RO", 89),
    ("INTERNATIONAL3", 137, "KEY_YEN", 124),
    ("LCTRL", 224, "KEY_LEFTCTRL", 29),
    ("LSHIFT", 225, "KEY_LEFTSHIFT", 42),
    ("LALT", 226, "KEY_LEFTALT", 56),
    ("LGUI", 227, "KEY_LEFTMETA", 125),
    ("RCTRL", 228, "KEY_RIGHTCTRL", 97),
    ("RSHIFT", 229, "KEY_RIGHTSHIFT", 54),
    ("RALT", 230, "KEY_RIGHTALT", 100),
    ("RGUI", 231, "KEY_RIGHTMETA", 126),
)

LINUX_KEYS: Final[dict[int, int]] = {scancode: code for _, scancode, _, code in SCANCODE_TABLE}
"""SDL scancode -> Linux key code."""

# pygame's button numbers: SDL's, except that 4 and 5 are the legacy wheel (pygame also
# sends MOUSEWHEEL for it) and SDL's X1/X2 become 6/7.
BUTTON_TABLE: Final[tuple[tuple[int, str, int], ...]] = (
    (1, "BTN_LEFT", 0x110),
    (2, "BTN_MIDDLE", 0x112),
    (3, "BTN_RIGHT", 0x111),
    (6, "BTN_SIDE", 0x113),
    (7, "BTN_EXTRA", 0x114),
)

LINUX_BUTTONS: Final[dict[int, int]] = {button: code for button, _, code in BUTTON_TABLE}
"""pygame mouse button -> Linux BTN_* code."""
