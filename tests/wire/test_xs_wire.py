"""xs_wire codec against the compiled xs_wire.h, plus framing properties."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvdisplay.wire import ProtocolError, xs_wire

LayoutBuilder = Callable[..., Path]


def c_layout(compile_c: LayoutBuilder, *flags: str) -> dict[str, str]:
    binary = compile_c("xs_wire_layout", *flags)
    lines = subprocess.run([binary], check=True, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in lines.splitlines())


def python_layout() -> dict[str, str]:
    numbers: dict[str, int] = {f"XS_{t.name}": t.value for t in xs_wire.MessageType}
    numbers |= {
        "XS_DEBUG": xs_wire.DEBUG,
        "XS_TYPE_COUNT": xs_wire.TYPE_COUNT,
        "XS_INVALID": xs_wire.INVALID_TYPE,
        "sizeof.xsd_sockmsg": xs_wire.HEADER.size,
        "XS_WATCH_PATH": xs_wire.WATCH_PATH,
        "XS_WATCH_TOKEN": xs_wire.WATCH_TOKEN,
        "XENSTORE_PAYLOAD_MAX": xs_wire.PAYLOAD_MAX,
        "XENSTORE_ABS_PATH_MAX": xs_wire.ABS_PATH_MAX,
        "XENSTORE_REL_PATH_MAX": xs_wire.REL_PATH_MAX,
    }
    # Field offsets come from packing a header whose fields are distinct
    # values, so they reflect what the codec really writes.
    packed = xs_wire.Header(1, 2, 3, 4).encode()
    for field, marker in (("type", 1), ("req_id", 2), ("tx_id", 3), ("len", 4)):
        numbers[f"offsetof.{field}"] = packed.index(marker.to_bytes(4, "little"))
    layout = {name: str(value) for name, value in numbers.items()}
    layout |= {
        "XS_WRITE_NONE": xs_wire.WRITE_NONE,
        "XS_WRITE_CREATE": xs_wire.WRITE_CREATE,
        "XS_WRITE_CREATE_EXCL": xs_wire.WRITE_CREATE_EXCL,
    }
    for index, (name, number) in enumerate(xs_wire.ERRORS):
        layout[f"error.{index}"] = f"{name} {number}"
    return layout


def test_every_number_matches_the_compiled_header(compile_c: LayoutBuilder) -> None:
    assert python_layout() == c_layout(compile_c)


def test_a_planted_offset_error_is_caught(compile_c: LayoutBuilder) -> None:
    planted = c_layout(compile_c, "-DPLANT_OFFSET_ERROR")
    mismatched = {k for k, v in python_layout().items() if planted.get(k) != v}
    assert mismatched == {"offsetof.len"}


messages = st.builds(
    xs_wire.XsMessage,
    type=st.integers(0, 2**32 - 1),
    req_id=st.integers(0, 2**32 - 1),
    tx_id=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=xs_wire.PAYLOAD_MAX),
)


@given(st.lists(messages, max_size=8), st.lists(st.integers(1, 64), min_size=1))
def test_framing_survives_any_chunking(
    sent: list[xs_wire.XsMessage], chunk_sizes: list[int]
) -> None:
    stream = b"".join(message.encode() for message in sent)
    reader = xs_wire.MessageReader()
    received: list[xs_wire.XsMessage | xs_wire.Oversized] = []
    position = 0
    for size in chunk_sizes * (len(stream) // min(chunk_sizes) + 1):
        if position >= len(stream):
            break
        received.extend(reader.feed(stream[position : position + size]))
        position += size
    assert received == sent
    assert reader.pending == 0


@given(st.integers(xs_wire.PAYLOAD_MAX + 1, 3 * xs_wire.PAYLOAD_MAX), st.binary(max_size=64))
def test_oversized_payload_is_dropped_and_framing_recovers(length: int, after: bytes) -> None:
    follow_up = xs_wire.XsMessage(xs_wire.MessageType.READ, 7, 0, after)
    reader = xs_wire.MessageReader()
    header = xs_wire.Header(xs_wire.MessageType.WRITE, 1, 0, length)
    stream = header.encode() + bytes(length) + follow_up.encode()
    received = [
        item
        for start in range(0, len(stream), 1000)
        for item in reader.feed(stream[start : start + 1000])
    ]
    assert received == [xs_wire.Oversized(header), follow_up]
    assert reader.pending == 0


def test_error_strings_round_trip_and_unknown_errno_becomes_einval() -> None:
    for name, number in xs_wire.ERRORS:
        assert xs_wire.error_payload(number) == name.encode() + b"\0"
        assert xs_wire.errno_from_error_payload(xs_wire.error_payload(number)) == number
    assert xs_wire.error_payload(12345) == b"EINVAL\0"
    with pytest.raises(ProtocolError):
        xs_wire.errno_from_error_payload(b"EWHATEVER\0")


# Text that UTF-8 can carry: lone surrogates are not strings a peer can send.
@given(
    st.lists(st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="\0")), min_size=1)
)
def test_string_lists_round_trip(parts: list[str]) -> None:
    assert xs_wire.split_strings(xs_wire.join_strings(*parts)) == parts


@given(st.binary())
def test_split_strings_only_raises_protocol_error(payload: bytes) -> None:
    try:
        xs_wire.split_strings(payload)
    except ProtocolError as error:
        assert error.status < 0
