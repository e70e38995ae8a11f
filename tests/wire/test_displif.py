"""displif codecs: bytes against a gcc-built C peer, round trips, fuzzing, errors."""

import dataclasses
import errno
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pvdisplay.wire import displif
from pvdisplay.wire.displif import (
    DbufCreate,
    DbufDestroy,
    FbAttach,
    FbDetach,
    GetEdid,
    Operation,
    PageDirectoryReader,
    PageFlip,
    PageFlipEvent,
    Request,
    Response,
    SetConfig,
)
from pvdisplay.wire.errors import ProtocolError

Peer = Callable[[str], str]

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)

requests: st.SearchStrategy[Request] = st.one_of(
    st.builds(
        DbufCreate,
        id=u16,
        dbuf_cookie=u64,
        width=u32,
        height=u32,
        bpp=u32,
        buffer_sz=u32,
        flags=st.sampled_from([0, displif.DBUF_FLG_REQ_ALLOC]),
        gref_directory=u32,
        data_ofs=u32,
    ),
    st.builds(DbufDestroy, id=u16, dbuf_cookie=u64),
    st.builds(
        FbAttach,
        id=u16,
        dbuf_cookie=u64,
        fb_cookie=u64,
        width=u32,
        height=u32,
        pixel_format=u32,
    ),
    st.builds(FbDetach, id=u16, fb_cookie=u64),
    st.builds(SetConfig, id=u16, fb_cookie=u64, x=u32, y=u32, width=u32, height=u32, bpp=u32),
    st.builds(PageFlip, id=u16, fb_cookie=u64),
    st.builds(GetEdid, id=u16, buffer_sz=u32, gref_directory=u32),
)
responses = st.one_of(
    st.builds(
        Response, id=u16, operation=u8.filter(lambda op: op != Operation.GET_EDID), status=i32
    ),
    st.builds(Response, id=u16, operation=st.just(Operation.GET_EDID), status=i32, edid_sz=u32),
)
events = st.builds(PageFlipEvent, id=u16, fb_cookie=u64)

C_COMMANDS = {
    DbufCreate: "dbuf_create",
    DbufDestroy: "dbuf_destroy",
    FbAttach: "fb_attach",
    FbDetach: "fb_detach",
    SetConfig: "set_config",
    PageFlip: "pg_flip",
    GetEdid: "get_edid",
    Response: "resp",
    PageFlipEvent: "evt",
}


def c_command(packet: Request | Response | PageFlipEvent) -> str:
    values = [str(getattr(packet, f.name)) for f in dataclasses.fields(packet)]
    return " ".join([C_COMMANDS[type(packet)], *values])


@pytest.fixture(scope="module")
def c_peer(compile_c: Callable[..., Path], start_c_peer: Callable[[Path], Peer]) -> Peer:
    return start_c_peer(compile_c("displif_codec"))


# ------------------------------------------------------------ against C


@given(requests)
def test_request_bytes_match_c(c_peer: Peer, request: Request) -> None:
    c_bytes = bytes.fromhex(c_peer(c_command(request)))
    assert request.encode() == c_bytes
    assert displif.decode_request(c_bytes) == request


@given(responses)
def test_response_bytes_match_c(c_peer: Peer, response: Response) -> None:
    c_bytes = bytes.fromhex(c_peer(c_command(response)))
    assert response.encode() == c_bytes
    assert displif.decode_response(c_bytes) == response
    if response.edid_sz == 0:
        encoded = displif.encode_response(response.id, response.operation, response.status)
        assert encoded == c_bytes


@given(events)
def test_event_bytes_match_c(c_peer: Peer, event: PageFlipEvent) -> None:
    c_bytes = bytes.fromhex(c_peer(c_command(event)))
    assert event.encode() == c_bytes
    assert displif.decode_event(c_bytes) == event
    assert displif.encode_page_flip_event(event.id, event.fb_cookie) == c_bytes


@given(u32)
@example(0)
@example(62)
@example(63)
@example(2**32 - 1)
def test_in_ring_slot_offset_matches_c_macro(c_peer: Peer, index: int) -> None:
    assert displif.in_ring_slot_offset(index) == int(c_peer(f"in_ring_ref {index}"))


@settings(max_examples=30, deadline=None)
@given(
    st.one_of(st.sampled_from([0, 1, 1022, 1023, 1024, 2046, 2047]), st.integers(0, 2100)),
    st.randoms(use_true_random=False),
)
def test_page_directory_matches_c(c_peer: Peer, num_grefs: int, rnd: random.Random) -> None:
    grefs = [rnd.getrandbits(32) for _ in range(num_grefs)]
    directory_refs = [
        rnd.randrange(1, 2**32) for _ in range(displif.directory_pages_for(num_grefs))
    ]
    command = ["page_directory", len(directory_refs), *directory_refs, num_grefs, *grefs]
    c_pages = bytes.fromhex(c_peer(" ".join(map(str, command))))

    assert b"".join(displif.encode_page_directory(grefs, directory_refs)) == c_pages
    reader = PageDirectoryReader(num_grefs)
    chain = [directory_refs[0]]
    for page_no in range(len(directory_refs)):
        next_ref = reader.feed(c_pages[page_no * 4096 : (page_no + 1) * 4096])
        if next_ref is not None:
            chain.append(next_ref)
    assert reader.done
    assert chain == directory_refs
    assert reader.grefs == grefs


def test_byte_comparison_catches_diagram_bpp(
    compile_c: Callable[..., Path], start_c_peer: Callable[[Path], Peer]
) -> None:
    """A C peer storing bpp where the ASCII diagram draws it disagrees with the codec."""
    ask = start_c_peer(compile_c("displif_codec", "-DPLANT_DIAGRAM_BPP"))
    request = SetConfig(id=1, fb_cookie=2, x=0, y=0, width=1920, height=1080, bpp=32)
    c_bytes = bytes.fromhex(ask(c_command(request)))
    assert c_bytes != request.encode()
    assert displif.decode_request(c_bytes) == dataclasses.replace(request, bpp=0)


# ----------------------------------------------------------- properties


@given(requests)
def test_request_round_trip(request: Request) -> None:
    slot = request.encode()
    assert len(slot) == displif.REQUEST_SIZE
    assert displif.decode_request(slot) == request
    assert displif.decode_request_header(slot) == (request.id, request.operation)


@given(responses)
def test_response_round_trip(response: Response) -> None:
    assert displif.decode_response(response.encode()) == response


@given(events)
def test_event_round_trip(event: PageFlipEvent) -> None:
    assert displif.decode_event(event.encode()) == event


@given(st.binary(min_size=64, max_size=64), st.sampled_from(list(Operation)))
def test_decoder_reads_exactly_the_layout_fields(junk: bytes, operation: Operation) -> None:
    """Decoding any slot then re-encoding keeps every field byte and zeroes the rest."""
    slot = junk[:2] + bytes([operation]) + junk[3:]
    try:
        request = displif.decode_request(slot)
    except ProtocolError as exc:
        assert operation == Operation.DBUF_CREATE and exc.errno == errno.EINVAL
        return
    encoded = request.encode()
    kept = bytearray(64)
    for spec in request.LAYOUT.fields.values():
        kept[spec.offset : spec.offset + spec.size] = slot[spec.offset : spec.offset + spec.size]
    assert encoded == bytes(kept)


DECODERS: list[Callable[[bytes], object]] = [
    displif.decode_request,
    displif.decode_request_header,
    displif.decode_response,
    displif.decode_event,
    lambda page: PageDirectoryReader(1500).feed(page),
    lambda page: PageDirectoryReader(5).feed(page),
]


@pytest.mark.parametrize("decode", DECODERS)
@given(
    st.one_of(
        st.binary(max_size=130),
        st.binary(min_size=64, max_size=64),
        st.binary(min_size=4096, max_size=4096),
    )
)
def test_fuzz_decoders_raise_only_protocol_error(
    decode: Callable[[bytes], object], data: bytes
) -> None:
    try:
        decode(data)
    except ProtocolError as exc:
        assert exc.errno == errno.EINVAL


@pytest.mark.parametrize("parse", [displif.parse_resolution, displif.parse_versions])
@given(st.text(max_size=30) | st.from_regex(r"[0-9x,]{0,25}", fullmatch=True))
def test_fuzz_xenstore_parsers_raise_only_protocol_error(
    parse: Callable[[str], object], text: str
) -> None:
    try:
        parse(text)
    except ProtocolError as exc:
        assert exc.errno == errno.EINVAL


@given(u32, u32)
def test_resolution_round_trip(width: int, height: int) -> None:
    assert displif.parse_resolution(displif.format_resolution(width, height)) == (width, height)


@given(st.lists(u32, min_size=1, max_size=5))
def test_versions_round_trip(versions: list[int]) -> None:
    assert displif.parse_versions(displif.format_versions(versions)) == tuple(versions)


@given(st.lists(events, min_size=1, max_size=70), st.integers(0, 2**32 - displif.IN_RING_LEN))
def test_event_page_slots_hold_what_was_written(batch: list[PageFlipEvent], start: int) -> None:
    page = bytearray(displif.EVENT_PAGE_SIZE)
    window = batch[-displif.IN_RING_LEN :]
    for offset, event in enumerate(window):
        displif.write_event(page, start + offset, event.encode())
    indices = displif.page_indices(page)
    indices.store(displif.IN_PROD_OFFSET, start + len(window))
    indices.store(displif.IN_CONS_OFFSET, start)
    assert indices.load(displif.IN_CONS_OFFSET) == start
    assert indices.load(displif.IN_PROD_OFFSET) == (start + len(window)) % 2**32
    indices.release()
    assert page[: displif.IN_RING_OFFS][8:] == bytes(displif.IN_RING_OFFS - 8)
    assert [displif.read_event(memoryview(page), start + i) for i in range(len(window))] == window


# ------------------------------------------------------------ examples


def test_wrapped_indices_alias_slots(c_peer: Peer) -> None:
    """2**32 is 4 mod 63: index 2**32 - 1 uses slot 3, and so does index 3 after the
    wrap, exactly as XENDISPL_IN_RING_REF computes it."""
    assert int(c_peer(f"in_ring_ref {2**32 - 1}")) == int(c_peer("in_ring_ref 3"))
    assert displif.in_ring_slot_offset(2**32 - 1) == displif.in_ring_slot_offset(3)
    assert displif.in_ring_slot_offset(2**32 - 1) == displif.IN_RING_OFFS + 3 * displif.EVENT_SIZE


@pytest.mark.parametrize("size", [0, 4, 63, 65, 128])
def test_wrong_slot_size_is_einval(size: int) -> None:
    slot = PageFlip(id=1, fb_cookie=2).encode().ljust(128, b"\0")[:size]
    for decode in (displif.decode_request, displif.decode_response, displif.decode_event):
        with pytest.raises(ProtocolError) as caught:
            decode(slot)
        assert caught.value.status == -errno.EINVAL


@pytest.mark.parametrize("operation", [0x00, 0x0F, 0x17, 0xFF])
def test_unknown_operation_is_einval_but_header_stays_readable(operation: int) -> None:
    """displ_be answers an unknown operation with -EINVAL, echoing id and operation."""
    slot = bytearray(64)
    slot[0:3] = bytes([0x34, 0x12, operation])
    with pytest.raises(ProtocolError) as caught:
        displif.decode_request(bytes(slot))
    assert caught.value.status == -errno.EINVAL
    header = displif.decode_request_header(bytes(slot))
    assert (header.id, header.operation) == (0x1234, operation)
    answer = Response(id=header.id, operation=header.operation, status=caught.value.status)
    assert displif.decode_response(answer.encode()) == answer


def test_unknown_dbuf_flags_are_einval() -> None:
    request = DbufCreate(1, 2, 64, 64, 32, 16384, displif.DBUF_FLG_REQ_ALLOC, 7, 0)
    decoded = displif.decode_request(request.encode())
    assert isinstance(decoded, DbufCreate) and decoded.backend_allocates
    with pytest.raises(ProtocolError, match="unknown flags 0x3"):
        displif.decode_request(dataclasses.replace(request, flags=3).encode())


def test_unknown_event_type_is_einval() -> None:
    slot = bytearray(PageFlipEvent(id=1, fb_cookie=5).encode())
    slot[2] = 1
    with pytest.raises(ProtocolError, match="unknown event type"):
        displif.decode_event(bytes(slot))


def test_reserved_bytes_are_ignored_and_edid_sz_only_read_for_get_edid() -> None:
    slot = bytearray(b"\xff" * 64)
    slot[0:8] = bytes([1, 0, Operation.PG_FLIP, 0, 0, 0, 0, 0])
    response = displif.decode_response(bytes(slot))
    assert (response.operation, response.edid_sz, response.status) == (Operation.PG_FLIP, 0, 0)
    slot[2] = Operation.GET_EDID
    assert displif.decode_response(bytes(slot)).edid_sz == 0xFFFFFFFF


def test_bpp_sits_where_the_c_struct_puts_it() -> None:
    slot = SetConfig(id=0, fb_cookie=1, x=0, y=0, width=0, height=0, bpp=0x20).encode()
    assert slot[32:36] == b"\x20\0\0\0"
    assert slot[36:40] == b"\0\0\0\0"


def test_encoders_reject_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="out of range"):
        PageFlip(id=0x10000, fb_cookie=1).encode()
    with pytest.raises(ValueError, match="out of range"):
        Response(id=1, operation=Operation.PG_FLIP, status=2**31).encode()
    with pytest.raises(ValueError, match="only carried by GET_EDID"):
        Response(id=1, operation=Operation.PG_FLIP, status=0, edid_sz=128)


@pytest.mark.parametrize(
    ("buffer_sz", "num_grefs", "directory_pages"),
    [
        (1920 * 1080 * 4, 2025, 2),
        (3840 * 2160 * 4, 8100, 8),
        (displif.EDID_MAX_SIZE, 8, 1),
        (0, 0, 1),
        (4097, 2, 1),
    ],
)
def test_page_directory_math_in_the_docs(
    buffer_sz: int, num_grefs: int, directory_pages: int
) -> None:
    assert displif.grefs_for_buffer(buffer_sz) == num_grefs
    assert displif.directory_pages_for(num_grefs) == directory_pages


@pytest.mark.parametrize(
    ("num_grefs", "pages"), [(0, 1), (1, 1), (1023, 1), (1024, 2), (2046, 2), (2047, 3)]
)
def test_directory_page_count(num_grefs: int, pages: int) -> None:
    assert displif.directory_pages_for(num_grefs) == pages


def test_directory_ending_early_is_einval() -> None:
    first, _ = displif.encode_page_directory(list(range(1, 1100)), [5, 6])
    truncated = bytearray(first)
    truncated[0:4] = bytes(4)
    reader = PageDirectoryReader(1099)
    with pytest.raises(ProtocolError, match="76 refs missing"):
        reader.feed(bytes(truncated))


def test_directory_continuing_past_its_last_page_is_einval() -> None:
    (page,) = displif.encode_page_directory([1, 2, 3], [9])
    looping = bytearray(page)
    looping[0:4] = (9).to_bytes(4, "little")
    with pytest.raises(ProtocolError, match="past its last page"):
        PageDirectoryReader(3).feed(bytes(looping))


def test_directory_misuse_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="need 2 directory pages"):
        displif.encode_page_directory(list(range(1024)), [1])
    reader = PageDirectoryReader(0)
    assert reader.feed(bytes(4096)) is None
    with pytest.raises(ValueError, match="already complete"):
        reader.feed(bytes(4096))


@pytest.mark.parametrize(
    "value", ["", "1920", "x1080", "1920x", "1920X1080", " 1920x1080", "1920x1080x3", "-1x2",
              "4294967296x1", "\u0661\u0662x3", "+5x5"],
)  # fmt: skip
def test_bad_resolution_is_einval(value: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        displif.parse_resolution(value)
    assert caught.value.errno == errno.EINVAL


@pytest.mark.parametrize("value", ["", ",", "1,", "1,,2", "1;2", "v2"])
def test_bad_versions_is_einval(value: str) -> None:
    with pytest.raises(ProtocolError):
        displif.parse_versions(value)


def test_protocol_version_is_listed_by_format_versions() -> None:
    assert displif.format_versions([1, displif.PROTOCOL_VERSION_INT]) == "1,2"
    assert displif.parse_versions("1,2")[-1] == int(displif.PROTOCOL_VERSION)
