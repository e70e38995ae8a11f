"""The window's sans-IO parts: key and button tables, the viewport, input translation."""

from collections.abc import Callable, Iterable

import pygame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.outputs.window import keys
from pvdisplay.outputs.window.translate import MAX_CONTACTS, InputTranslator, Viewport
from pvdisplay.planes.input_events import Key, PointerMove, TouchDown, TouchMove, TouchUp, Wheel
from pvdisplay.planes.model import PlaneInfo, find_plane

BTN_LEFT, KEY_A, KEY_LEFTSHIFT = 0x110, 30, 42
# Scancodes pygame has no KSCAN_ constant for, by the name SDL itself gives them.
SDL_NAMES = {
    "APPLICATION": "Application",
    "MUTE": "Mute",
    "VOLUMEUP": "VolumeUp",
    "VOLUMEDOWN": "VolumeDown",
    "KP_COMMA": "Keypad ,",
    **{f"F{n}": f"F{n}" for n in range(13, 25)},
}
SDLK_SCANCODE_MASK = 1 << 30


# -- tables, proven against the kernel header and SDL ------------------------------------


def test_linux_codes_match_input_event_codes_h(
    check_linux_input_codes: Callable[[Iterable[tuple[str, int, str]]], None],
) -> None:
    check_linux_input_codes(
        [(linux, code, f"SDL_SCANCODE_{name}") for name, _, linux, code in keys.SCANCODE_TABLE]
        + [(linux, code, f"button {button}") for button, linux, code in keys.BUTTON_TABLE]
    )
    assert len(keys.LINUX_KEYS) == len(keys.SCANCODE_TABLE)  # no scancode listed twice


def test_scancodes_are_sdls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    pygame.display.init()
    try:
        for name, scancode, _, _ in keys.SCANCODE_TABLE:
            constant = getattr(pygame, f"KSCAN_{name}", None)
            if constant is not None:
                assert constant == scancode, name
            else:
                keycode = scancode | SDLK_SCANCODE_MASK
                assert pygame.key.name(keycode, use_compat=False) == SDL_NAMES[name]
        assert pygame.BUTTON_LEFT == 1 and pygame.BUTTON_MIDDLE == 2 and pygame.BUTTON_RIGHT == 3
        assert pygame.BUTTON_X1 == 6 and pygame.BUTTON_X2 == 7
    finally:
        pygame.display.quit()


# -- viewport ------------------------------------------------------------------------------

sides = st.integers(1, 4000)


viewports = st.builds(
    Viewport, sides, sides, sides, sides, st.integers(0, 100), st.integers(0, 100)
)


@given(viewports, st.data())
@settings(max_examples=300)
def test_every_guest_pixel_centre_maps_back_to_that_pixel(
    viewport: Viewport, data: st.DataObject
) -> None:
    left, top, width, height = viewport.rect
    assert left >= 0 and left + width <= viewport.window_width
    assert top >= 0 and top + height <= viewport.window_height
    assert width == viewport.window_width or height == viewport.window_height  # fills one side
    guest_w, guest_h, x0, y0 = (
        viewport.guest_width,
        viewport.guest_height,
        viewport.guest_x,
        viewport.guest_y,
    )
    column = data.draw(st.integers(0, guest_w - 1))
    row = data.draw(st.integers(0, guest_h - 1))
    x = left + (column + 0.5) * width / guest_w
    y = top + (row + 0.5) * height / guest_h
    assert viewport.to_guest(x, y) == (x0 + column, y0 + row)


@given(viewports, st.floats(), st.floats())
@settings(max_examples=300)
def test_any_window_position_lands_inside_the_picture(
    viewport: Viewport, x: float, y: float
) -> None:
    gx, gy = viewport.to_guest(x, y)
    assert viewport.guest_x <= gx < viewport.guest_x + viewport.guest_width
    assert viewport.guest_y <= gy < viewport.guest_y + viewport.guest_height


def test_letterboxed_window_positions() -> None:
    viewport = Viewport(900, 600, 320, 240)
    assert viewport.rect == (50, 0, 800, 600)
    assert viewport.to_guest(301, 126) == (100, 50)
    assert viewport.to_guest(10, 599) == (0, 239)  # in the bar: the picture's edge
    assert viewport.to_guest(899, -5) == (319, 0)


# -- translation ---------------------------------------------------------------------------


def translator() -> InputTranslator:
    return InputTranslator(Viewport(640, 480, 320, 240))


def test_buttons_carry_the_position_and_repeated_moves_are_not_sent() -> None:
    input_ = translator()
    assert input_.button(1, True, 20, 40) == [PointerMove(10, 20), Key(BTN_LEFT, True)]
    assert input_.motion(21, 41) == []  # same guest pixel at 2x
    assert input_.motion(22, 41) == [PointerMove(11, 20)]
    assert input_.button(1, False, 22, 41) == [Key(BTN_LEFT, False)]
    assert input_.button(4, True, 0, 0) == []  # pygame's legacy wheel button
    assert input_.wheel(1, flipped=False) == [Wheel(1)]
    assert input_.wheel(2, flipped=True) == [Wheel(-2)]
    assert input_.wheel(0, flipped=False) == []


def test_keys_pair_up_and_focus_loss_lets_go_of_everything() -> None:
    input_ = translator()
    assert input_.key(pygame.KSCAN_A, True) == [Key(KEY_A, True)]
    assert input_.key(pygame.KSCAN_A, True) == []
    assert input_.key(pygame.KSCAN_LSHIFT, False) == []  # pressed before we had focus
    assert input_.key(0xFFFF, True) == []  # no Linux code for it
    assert input_.key(pygame.KSCAN_LSHIFT, True) == [Key(KEY_LEFTSHIFT, True)]
    input_.button(1, True, 0, 0)
    input_.finger_down(1, 99, 0.5, 0.5)
    assert input_.release_all() == [
        Key(KEY_A, False),
        Key(KEY_LEFTSHIFT, False),
        Key(BTN_LEFT, False),
        TouchUp(0),
    ]
    assert input_.release_all() == []


def test_fingers_take_the_lowest_free_contact() -> None:
    input_ = translator()
    assert input_.finger_down(1, 10, 0.0, 0.0) == [TouchDown(0, 0, 0)]
    assert input_.finger_down(1, 11, 0.5, 0.5) == [TouchDown(1, 160, 120)]
    assert input_.finger_down(2, 10, 1.0, 1.0) == [TouchDown(2, 319, 239)]  # another device
    assert input_.finger_up(1, 10) == [TouchUp(0)]
    assert input_.finger_down(1, 12, 0.25, 0.25) == [TouchDown(0, 80, 60)]
    assert input_.finger_move(1, 11, 0.75, 0.5) == [TouchMove(1, 240, 120)]
    assert input_.finger_move(1, 13, 0.75, 0.5) == []  # never touched
    assert input_.finger_up(1, 13) == []


finger_events = st.lists(
    st.tuples(
        st.sampled_from(["down", "move", "up"]),
        st.integers(0, 14),
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
    max_size=60,
)


@given(finger_events)
@settings(max_examples=300)
def test_contacts_stay_unique_bounded_and_paired(
    events: list[tuple[str, int, float, float]],
) -> None:
    input_ = translator()
    held: dict[int, int] = {}  # finger -> contact, as the guest sees it
    for phase, finger, fx, fy in events:
        if phase == "down":
            produced = input_.finger_down(0, finger, fx, fy)
        elif phase == "move":
            produced = input_.finger_move(0, finger, fx, fy)
        else:
            produced = input_.finger_up(0, finger)
        for event in produced:
            if isinstance(event, TouchDown):
                assert event.contact not in held.values()
                assert event.contact == min(set(range(MAX_CONTACTS)) - set(held.values()))
                held[finger] = event.contact
            elif isinstance(event, TouchMove):
                assert held[finger] == event.contact
            else:
                assert isinstance(event, TouchUp)
                assert held.pop(finger) == event.contact
            if isinstance(event, TouchDown | TouchMove):
                assert 0 <= event.x < 320 and 0 <= event.y < 240
        assert len(held) <= MAX_CONTACTS
    released = [e.contact for e in input_.release_all() if isinstance(e, TouchUp)]
    assert sorted(released) == sorted(held.values())


# -- choosing the connector ----------------------------------------------------------------


def test_connector_by_index_or_unique_id_and_the_error_names_the_choices() -> None:
    planes = [PlaneInfo(3, 0, 0, "left", 640, 480), PlaneInfo(3, 0, 1, "right", 320, 200)]
    assert find_plane(planes, 3, 0, "1").unique_id == "right"
    assert find_plane(planes, 3, 0, "left").connector == 0
    with pytest.raises(LookupError, match=r"no connector '2'; has 0 \(left\), 1 \(right\)$"):
        find_plane(planes, 3, 0, "2")
    with pytest.raises(LookupError, match=r"domain 4 device 0 has no connector 'left'; has none$"):
        find_plane(planes, 4, 0, "left")
