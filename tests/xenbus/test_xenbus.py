"""XenbusState against the compiled xenbus.h, and state-node parsing."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvdisplay.wire import ProtocolError
from pvdisplay.xenbus import XenbusState, parse_state


def test_states_match_the_compiled_header(compile_c: Callable[..., Path]) -> None:
    output = subprocess.run(
        [compile_c("xenbus_states")], check=True, capture_output=True, text=True
    ).stdout
    c_states = {
        name.removeprefix("XenbusState").lower(): int(value)
        for name, value in (line.split() for line in output.splitlines())
    }
    python_states = {state.name.replace("_", "").lower(): int(state) for state in XenbusState}
    assert python_states == c_states


@pytest.mark.parametrize("state", list(XenbusState))
def test_state_nodes_round_trip(state: XenbusState) -> None:
    assert parse_state(state.encode().encode()) is state


@given(st.binary(max_size=12))
def test_garbage_state_is_a_protocol_error(value: bytes) -> None:
    try:
        state = parse_state(value)
    except ProtocolError as error:
        assert error.status < 0
    else:
        assert int(value.decode("ascii").strip("\0")) == state
