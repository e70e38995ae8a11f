"""X keysyms (what RFB KeyEvents carry) to Linux input codes (what kbdif carries).

RFB sends the symbol a key produced, not the key, so this maps each symbol to the key
that makes it on a US layout: "a" and "A" both become KEY_A, "!" becomes KEY_1. The
client sends Shift itself (as its own KeyEvent) when the user holds it. A symbol no US
key produces is dropped. Every name here is checked against the compiled
<X11/keysymdef.h> and <linux/input-event-codes.h> by the tests.
"""

from typing import Final

# Linux input codes by their input-event-codes.h names.
LINUX_CODES: Final = {
    "KEY_ESC": 1, "KEY_1": 2, "KEY_2": 3, "KEY_3": 4, "KEY_4": 5, "KEY_5": 6, "KEY_6": 7,
    "KEY_7": 8, "KEY_8": 9, "KEY_9": 10, "KEY_0": 11, "KEY_MINUS": 12, "KEY_EQUAL": 13,
    "KEY_BACKSPACE": 14, "KEY_TAB": 15, "KEY_Q": 16, "KEY_W": 17, "KEY_E": 18, "KEY_R": 19,
    "KEY_T": 20, "KEY_Y": 21, "KEY_U": 22, "KEY_I": 23, "KEY_O": 24, "KEY_P": 25,
    "KEY_LEFTBRACE": 26, "KEY_RIGHTBRACE": 27, "KEY_ENTER": 28, "KEY_LEFTCTRL": 29,
    "KEY_A": 30, "KEY_S": 31, "KEY_D": 32, "KEY_F": 33, "KEY_G": 34, "KEY_H": 35,
    "KEY_J": 36, "KEY_K": 37, "KEY_L": 38, "KEY_SEMICOLON": 39, "KEY_APOSTROPHE": 40,
    "KEY_GRAVE": 41, "KEY_LEFTSHIFT": 42, "KEY_BACKSLASH": 43, "KEY_Z": 44, "KEY_X": 45,
    "KEY_C": 46, "KEY_V": 47, "KEY_B": 48, "KEY_N": 49, "KEY_M": 50, "KEY_COMMA": 51,
    "KEY_DOT": 52, "KEY_SLASH": 53, "KEY_RIGHTSHIFT": 54, "KEY_KPASTERISK": 55,
    "KEY_LEFTALT": 56, "KEY_SPACE": 57, "KEY_CAPSLOCK": 58, "KEY_F1": 59, "KEY_F2": 60,
    "KEY_F3": 61, "KEY_F4": 62, "KEY_F5": 63, "KEY_F6": 64, "KEY_F7": 65, "KEY_F8": 66,
    "KEY_F9": 67, "KEY_F10": 68, "KEY_NUMLOCK": 69, "KEY_SCROLLLOCK": 70, "KEY_KP7": 71,
    "KEY_KP8": 72, "KEY_KP9": 73, "KEY_KPMINUS": 74, "KEY_KP4": 75, "KEY_KP5": 76,
    "KEY_KP6": 77, "KEY_KPPLUS": 78, "KEY_KP1": 79, "KEY_KP2": 80, "KEY_KP3": 81,
    "KEY_KP0": 82, "KEY_KPDOT": 83, "KEY_F11": 87, "KEY_F12": 88, "KEY_KPENTER": 96,
    "KEY_RIGHTCTRL": 97, "KEY_KPSLASH": 98, "KEY_SYSRQ": 99, "KEY_RIGHTALT": 100,
    "KEY_HOME": 102, "KEY_UP": 103, "KEY_PAGEUP": 104, "KEY_LEFT": 105, "KEY_RIGHT": 106,
    "KEY_END": 107, "KEY_DOWN": 108, "KEY_PAGEDOWN": 109, "KEY_INSERT": 110,
    "KEY_DELETE": 111, "KEY_KPEQUAL": 117, "KEY_PAUSE": 119, "KEY_KPCOMMA": 121,
    "KEY_LEFTMETA": 125, "KEY_RIGHTMETA": 126, "KEY_COMPOSE": 127,
    "BTN_LEFT": 0x110, "BTN_RIGHT": 0x111, "BTN_MIDDLE": 0x112,
}  # fmt: skip

# Keysyms by their keysymdef.h names (XK_ prefix dropped), and the key each needs.
_CHARACTER_KEYS: Final = {
    "`~": "KEY_GRAVE", "1!": "KEY_1", "2@": "KEY_2", "3#": "KEY_3", "4$": "KEY_4",
    "5%": "KEY_5", "6^": "KEY_6", "7&": "KEY_7", "8*": "KEY_8", "9(": "KEY_9", "0)": "KEY_0",
    "-_": "KEY_MINUS", "=+": "KEY_EQUAL", "[{": "KEY_LEFTBRACE", "]}": "KEY_RIGHTBRACE",
    "\\|": "KEY_BACKSLASH", ";:": "KEY_SEMICOLON", "'\"": "KEY_APOSTROPHE",
    ",<": "KEY_COMMA", ".>": "KEY_DOT", "/?": "KEY_SLASH", " ": "KEY_SPACE",
}  # fmt: skip

FUNCTION_KEYSYMS: Final = {
    "BackSpace": (0xFF08, "KEY_BACKSPACE"), "Tab": (0xFF09, "KEY_TAB"),
    "ISO_Left_Tab": (0xFE20, "KEY_TAB"), "Return": (0xFF0D, "KEY_ENTER"),
    "Pause": (0xFF13, "KEY_PAUSE"), "Scroll_Lock": (0xFF14, "KEY_SCROLLLOCK"),
    "Sys_Req": (0xFF15, "KEY_SYSRQ"), "Escape": (0xFF1B, "KEY_ESC"),
    "Delete": (0xFFFF, "KEY_DELETE"), "Home": (0xFF50, "KEY_HOME"), "Left": (0xFF51, "KEY_LEFT"),
    "Up": (0xFF52, "KEY_UP"), "Right": (0xFF53, "KEY_RIGHT"), "Down": (0xFF54, "KEY_DOWN"),
    "Page_Up": (0xFF55, "KEY_PAGEUP"), "Page_Down": (0xFF56, "KEY_PAGEDOWN"),
    "End": (0xFF57, "KEY_END"), "Print": (0xFF61, "KEY_SYSRQ"), "Insert": (0xFF63, "KEY_INSERT"),
    "Menu": (0xFF67, "KEY_COMPOSE"), "Num_Lock": (0xFF7F, "KEY_NUMLOCK"),
    "KP_Enter": (0xFF8D, "KEY_KPENTER"), "KP_Home": (0xFF95, "KEY_KP7"),
    "KP_Left": (0xFF96, "KEY_KP4"), "KP_Up": (0xFF97, "KEY_KP8"), "KP_Right": (0xFF98, "KEY_KP6"),
    "KP_Down": (0xFF99, "KEY_KP2"), "KP_Page_Up": (0xFF9A, "KEY_KP9"),
    "KP_Page_Down": (0xFF9B, "KEY_KP3"), "KP_End": (0xFF9C, "KEY_KP1"),
    "KP_Begin": (0xFF9D, "KEY_KP5"), "KP_Insert": (0xFF9E, "KEY_KP0"),
    "KP_Delete": (0xFF9F, "KEY_KPDOT"), "KP_Multiply": (0xFFAA, "KEY_KPASTERISK"),
    "KP_Add": (0xFFAB, "KEY_KPPLUS"), "KP_Separator": (0xFFAC, "KEY_KPCOMMA"),
    "KP_Subtract": (0xFFAD, "KEY_KPMINUS"), "KP_Decimal": (0xFFAE, "KEY_KPDOT"),
    "KP_Divide": (0xFFAF, "KEY_KPSLASH"), "KP_Equal": (0xFFBD, "KEY_KPEQUAL"),
    "KP_0": (0xFFB0, "KEY_KP0"), "KP_1": (0xFFB1, "KEY_KP1"), "KP_2": (0xFFB2, "KEY_KP2"),
    "KP_3": (0xFFB3, "KEY_KP3"), "KP_4": (0xFFB4, "KEY_KP4"), "KP_5": (0xFFB5, "KEY_KP5"),
    "KP_6": (0xFFB6, "KEY_KP6"), "KP_7": (0xFFB7, "KEY_KP7"), "KP_8": (0xFFB8, "KEY_KP8"),
    "KP_9": (0xFFB9, "KEY_KP9"),
    "F1": (0xFFBE, "KEY_F1"), "F2": (0xFFBF, "KEY_F2"), "F3": (0xFFC0, "KEY_F3"),
    "F4": (0xFFC1, "KEY_F4"), "F5": (0xFFC2, "KEY_F5"), "F6": (0xFFC3, "KEY_F6"),
    "F7": (0xFFC4, "KEY_F7"), "F8": (0xFFC5, "KEY_F8"), "F9": (0xFFC6, "KEY_F9"),
    "F10": (0xFFC7, "KEY_F10"), "F11": (0xFFC8, "KEY_F11"), "F12": (0xFFC9, "KEY_F12"),
    "Shift_L": (0xFFE1, "KEY_LEFTSHIFT"), "Shift_R": (0xFFE2, "KEY_RIGHTSHIFT"),
    "Control_L": (0xFFE3, "KEY_LEFTCTRL"), "Control_R": (0xFFE4, "KEY_RIGHTCTRL"),
    "Caps_Lock": (0xFFE5, "KEY_CAPSLOCK"), "Meta_L": (0xFFE7, "KEY_LEFTMETA"),
    "Meta_R": (0xFFE8, "KEY_RIGHTMETA"), "Alt_L": (0xFFE9, "KEY_LEFTALT"),
    "Alt_R": (0xFFEA, "KEY_RIGHTALT"), "Super_L": (0xFFEB, "KEY_LEFTMETA"),
    "Super_R": (0xFFEC, "KEY_RIGHTMETA"), "ISO_Level3_Shift": (0xFE03, "KEY_RIGHTALT"),
}  # fmt: skip


def _keysym_table() -> dict[int, int]:
    table = {keysym: LINUX_CODES[key] for keysym, key in FUNCTION_KEYSYMS.values()}
    for characters, key in _CHARACTER_KEYS.items():
        for character in characters:
            table[ord(character)] = LINUX_CODES[key]  # Latin-1 keysyms are the code points
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        table[ord(letter)] = table[ord(letter.lower())] = LINUX_CODES[f"KEY_{letter}"]
    return table


KEYSYM_TO_CODE: Final = _keysym_table()


def linux_code(keysym: int) -> int | None:
    """The KEY_* code for an X keysym, or None if no US-layout key produces it."""
    return KEYSYM_TO_CODE.get(keysym)
