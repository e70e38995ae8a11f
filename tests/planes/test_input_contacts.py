"""Contact slots for touching fingers: lowest free slot, held until lifted, bounded."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.planes.contacts import ContactSlots


def test_fingers_take_the_lowest_free_slot_and_keep_it_until_they_lift() -> None:
    slots = ContactSlots[str](3)
    assert [slots.touch("a"), slots.touch("b"), slots.touch("c")] == [0, 1, 2]
    assert slots.touch("d") is None  # every slot held: the extra finger is ignored
    assert slots.touch("b") is None  # already touching
    assert slots.lift("b") == 1
    assert slots.slot("b") is None and slots.lift("b") is None
    assert slots.touch("d") == 1
    assert slots.slot("d") == 1 and slots.slot("a") == 0
    assert slots.lift_all() == [0, 1, 2]
    assert slots.slot("a") is None and slots.touch("e") == 0


def test_a_copy_changes_independently() -> None:
    slots = ContactSlots[int](2)
    slots.touch(7)
    copied = slots.copy()
    assert copied.touch(8) == 1 and copied.lift(7) == 0
    assert slots.slot(7) == 0 and slots.slot(8) is None
    assert copied.slot(7) is None and copied.slot(8) == 1


actions = st.lists(st.tuples(st.sampled_from(["touch", "lift"]), st.integers(0, 12)), max_size=80)


@given(st.integers(0, 6), actions)
@settings(max_examples=200)
def test_held_slots_stay_unique_lowest_first_and_within_count(
    count: int, steps: list[tuple[str, int]]
) -> None:
    slots = ContactSlots[int](count)
    held: dict[int, int] = {}  # finger -> slot, as a guest would see it
    for action, finger in steps:
        if action == "touch":
            slot = slots.touch(finger)
            free = sorted(set(range(count)) - set(held.values()))
            if finger in held or not free:
                assert slot is None
            else:
                assert slot == free[0]
                held[finger] = slot
        else:
            assert slots.lift(finger) == held.pop(finger, None)
        assert all(slots.slot(f) == s for f, s in held.items())
    assert slots.lift_all() == sorted(held.values())
    assert slots.lift_all() == []
