"""Output-side input events: JSON round trips and rejection of anything malformed."""

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pvdisplay.planes import input_events as events
from pvdisplay.wire import ProtocolError

coordinates = st.integers(-(2**31), 2**31 - 1)
any_event = st.one_of(
    st.builds(events.Key, code=coordinates, pressed=st.booleans()),
    st.builds(events.PointerMove, x=coordinates, y=coordinates),
    st.builds(events.Wheel, steps=coordinates),
    st.builds(events.TouchDown, contact=coordinates, x=coordinates, y=coordinates),
    st.builds(events.TouchMove, contact=coordinates, x=coordinates, y=coordinates),
    st.builds(events.TouchUp, contact=coordinates),
)


@given(any_event)
def test_events_round_trip_through_json(event: events.InputEvent) -> None:
    assert events.from_json(events.to_json(event)) == event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(
    st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(["type", "code", "pressed", "x", "y", "steps", "contact"]), json_values
        ),
    )
)
def test_malformed_events_are_einval(data: Any) -> None:
    try:
        event = events.from_json(data)
    except ProtocolError as error:
        assert error.status == -22
    else:
        assert events.to_json(event) == data


def test_a_boolean_is_not_a_coordinate() -> None:
    try:
        events.from_json({"type": "pointer", "x": True, "y": 3})
    except ProtocolError:
        return
    raise AssertionError("True accepted as a coordinate")
