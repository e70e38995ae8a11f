"""EDID: known bytes, round trips, edid-decode's verdict, and a parser that only says EINVAL."""

import errno
import math
import re
import shutil
import string
import subprocess

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pvdisplay.wire import edid
from pvdisplay.wire.edid import build_edid, parse_edid, preferred_timing
from pvdisplay.wire.errors import ProtocolError

sizes = st.integers(1, edid.MAX_ACTIVE)
descriptor_text = st.text(
    st.sampled_from(string.ascii_letters + string.digits + string.punctuation + " "),
    min_size=1,
    max_size=13,
).filter(lambda text: not text.endswith(" "))


def edid_decode() -> str:
    path = shutil.which("edid-decode")
    if path is None:
        pytest.fail("edid-decode is missing: `apt-get install edid-decode` (make test installs it)")
    return path


def with_checksum(block: bytearray) -> bytes:
    block[127] = -sum(block[:127]) & 0xFF
    return bytes(block)


def test_1080p_block_bytes() -> None:
    block = build_edid(1920, 1080)
    assert len(block) == 128
    assert sum(block) % 256 == 0
    assert block[:8] == bytes.fromhex("00ffffffffffff00")
    assert block[8:10] == bytes.fromhex("60ae")  # "XEN": 24<<10 | 5<<5 | 14
    assert block[18:21] == bytes((1, 4, 0xA0))  # EDID 1.4, digital, 8 bits per colour
    # The 1920x1080 CVT-RB descriptor real monitors carry: 138.5 MHz, 2080x1111 total.
    assert block[54:72] == bytes.fromhex("1a3680a070381f4030203500fc1e1100001a")
    assert block[126] == 0


def test_known_cvt_rb_modes() -> None:
    # (width, height): (MHz * 100, h_total, v_total) from the VESA DMT's CVT-RB entries.
    known = {
        (1920, 1080): (13850, 2080, 1111),
        (1280, 800): (7100, 1440, 823),
        (1680, 1050): (11900, 1840, 1080),
        (1920, 1200): (15400, 2080, 1235),
        (2560, 1600): (26850, 2720, 1646),
    }
    for (width, height), (clock, h_total, v_total) in known.items():
        timing = preferred_timing(width, height)
        assert (timing.pixel_clock_khz // 10, timing.h_total, timing.v_total) == (
            clock,
            h_total,
            v_total,
        ), (width, height)


def megahertz(cvt_report: str) -> float:
    clock = re.search(r"([\d.]+) MHz", cvt_report)
    assert clock is not None, cvt_report
    return float(clock.group(1))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, edid.MAX_ACTIVE // 8), sizes)
def test_timing_matches_edid_decode_cvt_calculator(cells: int, height: int) -> None:
    # CVT defines widths in 8-pixel cells; edid-decode clocks other widths as if rounded down.
    width = cells * 8
    timing = preferred_timing(width, height)
    assume(timing.pixel_clock_khz > edid.MIN_PIXEL_CLOCK_KHZ)  # not padded beyond CVT

    def calculate(fps: int) -> str:
        return subprocess.run(
            [edid_decode(), "--cvt", f"w={width},h={height},fps={fps},rb=1"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    output = calculate(60)
    if megahertz(output) > 655.35:  # 60 Hz needs more clock than a descriptor holds
        output = calculate(math.ceil(timing.refresh_hz))
    v_fields = re.search(r"Vfront\s+(\d+) Vsync\s+(\d+) Vback\s+(\d+)", output)
    assert v_fields is not None, output
    assert round(megahertz(output) * 1000) == timing.pixel_clock_khz
    assert tuple(map(int, v_fields.groups())) == (timing.v_front, timing.v_sync, timing.v_back)
    assert (timing.h_front, timing.h_sync, timing.h_back) == (48, 32, 80)


@given(sizes, sizes)
def test_every_size_fits_a_descriptor(width: int, height: int) -> None:
    timing = preferred_timing(width, height)
    assert edid.MIN_PIXEL_CLOCK_KHZ <= timing.pixel_clock_khz <= edid.MAX_PIXEL_CLOCK_KHZ
    assert timing.h_total - width <= edid.MAX_BLANK
    assert timing.v_total - height <= edid.MAX_BLANK
    assert 35 < timing.refresh_hz <= 60


def test_refresh_is_60_unless_the_clock_cannot_say_it() -> None:
    assert 59.9 < preferred_timing(3840, 2160).refresh_hz < 60
    assert 59.9 < preferred_timing(1, 1).refresh_hz < 60
    huge = preferred_timing(4095, 4095)
    assert 35 < huge.refresh_hz < 37
    assert huge.pixel_clock_khz <= edid.MAX_PIXEL_CLOCK_KHZ


@settings(max_examples=60, deadline=None)
@given(
    width=sizes,
    height=sizes,
    name=descriptor_text,
    unique_id=st.none() | descriptor_text,
    vendor=st.text(st.sampled_from(string.ascii_uppercase), min_size=3, max_size=3),
    product_code=st.integers(0, 0xFFFF),
    serial_number=st.integers(0, 0xFFFF_FFFF),
    week=st.integers(0, 54),
    year=st.integers(2006, 2245),
)
def test_parse_reads_back_what_build_wrote(
    *,
    width: int,
    height: int,
    name: str,
    unique_id: str | None,
    vendor: str,
    product_code: int,
    serial_number: int,
    week: int,
    year: int,
) -> None:
    block = build_edid(
        width,
        height,
        unique_id=unique_id,
        name=name,
        vendor=vendor,
        product_code=product_code,
        serial_number=serial_number,
        week=week,
        year=year,
    )
    info = parse_edid(block)
    assert (info.width, info.height) == (width, height)
    assert info.preferred == preferred_timing(width, height)
    assert (info.vendor, info.product_code, info.serial_number) == (
        vendor,
        product_code,
        serial_number,
    )
    assert (info.week, info.year, info.version) == (week, year, (1, 4))
    assert (info.name, info.serial_string) == (name, unique_id)
    assert info.size_mm == (max(round(width * 25.4 / 96), 1), max(round(height * 25.4 / 96), 1))


def test_long_unique_id_becomes_a_stable_digest() -> None:
    uuid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    serial = parse_edid(build_edid(800, 600, unique_id=uuid)).serial_string
    assert serial is not None and re.fullmatch(r"[0-9a-f]{13}", serial)
    assert serial == edid.serial_string_for(uuid)
    assert serial != edid.serial_string_for(uuid.replace("1", "2"))
    assert parse_edid(build_edid(800, 600, unique_id="")).serial_string is None


@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_serial_strings_are_valid_text_and_distinct(first: str, second: str) -> None:
    assume(first != second)
    serials = [edid.serial_string_for(unique_id) for unique_id in (first, second)]
    assert serials[0] != serials[1]
    for serial in serials:
        assert 1 <= len(serial) <= 13 and serial.isascii() and serial.isprintable()


@settings(max_examples=25, deadline=None)
@given(sizes, sizes, descriptor_text, st.none() | st.text(min_size=1, max_size=40))
def test_edid_decode_finds_the_block_conformant(
    width: int, height: int, name: str, unique_id: str | None
) -> None:
    result = subprocess.run(
        [edid_decode(), "--check", "--skip-hex-dump", "-"],
        input=build_edid(width, height, name=name, unique_id=unique_id),
        capture_output=True,
        check=False,
    )
    report = result.stdout.decode()
    assert result.returncode == 0 and "EDID conformity: PASS" in report, report
    assert re.search(rf"DTD 1:\s+{width}x{height}\s", report), report
    assert f"Display Product Name: '{name}'" in report, report
    if unique_id:
        serial = edid.serial_string_for(unique_id)
        assert f"Display Product Serial Number: '{serial}'" in report, report


def test_edid_decode_has_no_warnings_for_desktop_sizes() -> None:
    for width, height in ((800, 600), (1024, 768), (1920, 1080), (3840, 2160), (4095, 4095)):
        report = subprocess.run(
            [edid_decode(), "--check", "--skip-hex-dump", "-"],
            input=build_edid(width, height, unique_id="DP-1"),
            capture_output=True,
            check=True,
        ).stdout.decode()
        assert "Warnings:" not in report and "Failures:" not in report, report


@pytest.mark.parametrize(
    ("width", "height", "listed"),
    [
        (639, 480, []),
        (640, 480, [(640, 480)]),
        (1023, 768, [(640, 480), (800, 600)]),
        (1024, 767, [(640, 480), (800, 600)]),
        (1024, 768, [(640, 480), (800, 600), (1024, 768)]),
        (1280, 800, [(640, 480), (800, 600), (1024, 768)]),
        (4095, 4095, [(640, 480), (800, 600), (1024, 768)]),
    ],
)
def test_established_modes_are_the_vesa_60hz_ones_that_fit(
    width: int, height: int, listed: list[tuple[int, int]]
) -> None:
    """edid-decode's own DMT table confirms each listed mode's clock and refresh."""
    report = subprocess.run(
        [edid_decode(), "--check", "--skip-hex-dump", "-"],
        input=build_edid(width, height),
        capture_output=True,
        check=True,
    ).stdout.decode()
    decoded = [
        (int(w), int(h), float(hz), float(mhz))
        for w, h, hz, mhz in re.findall(
            r"DMT 0x[0-9a-f]+:\s+(\d+)x(\d+)\s+([\d.]+) Hz.*?([\d.]+) MHz", report
        )
    ]
    timings = edid.established_timings(width, height)
    assert [(w, h) for w, h, _, _ in decoded] == listed, report
    assert [(t.h_active, t.v_active) for t in timings] == listed
    for (_, _, hz, mhz), timing in zip(decoded, timings, strict=True):
        assert mhz * 1000 == pytest.approx(timing.pixel_clock_khz)
        assert hz == pytest.approx(timing.refresh_hz, abs=1e-5)
    assert "EDID conformity: PASS" in report and "Warnings:" not in report, report


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0, "height": 600}, "0x600"),
        ({"width": 4096, "height": 600}, "4096x600"),
        ({"width": 800, "height": 4096}, "800x4096"),
        ({"name": ""}, "name"),
        ({"name": "fourteen chars"}, "name"),
        ({"name": "caf\u00e9"}, "name"),
        ({"name": "trailing "}, "name"),
        ({"vendor": "Xen"}, "vendor"),
        ({"vendor": "XENO"}, "vendor"),
        ({"product_code": 0x10000}, "product code"),
        ({"serial_number": -1}, "serial number"),
        ({"week": 55}, "week"),
        ({"year": 2005}, "year"),
        ({"year": 2246}, "year"),
    ],
)
def test_builder_rejects_what_an_edid_cannot_carry(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"width": 800, "height": 600, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_edid(**arguments)  # type: ignore[arg-type]


def corrupt(offset: int, value: int, *, fix_checksum: bool = True) -> bytes:
    block = bytearray(build_edid(1024, 768))
    block[offset] = value
    return with_checksum(block) if fix_checksum else bytes(block)


def interlaced() -> bytes:
    block = bytearray(build_edid(1024, 768))
    block[54 + 17] |= 0x80
    return with_checksum(block)


def sync_beyond_blanking() -> bytes:
    block = bytearray(build_edid(1024, 768))
    block[54 + 8] = 200  # h front porch 200 > h blank 160
    return with_checksum(block)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "0 bytes"),
        (build_edid(1024, 768)[:127], "127 bytes"),
        (build_edid(1024, 768) + b"\x00", "129 bytes"),
        (bytes(128 * 257), "32896 bytes"),
        (build_edid(1024, 768) + bytes(128), "announces 1 blocks"),
        (corrupt(0, 0x01), "header"),
        (corrupt(30, 0x00, fix_checksum=False), "checksum in EDID block 0"),
        (corrupt(126, 1) + bytes(127) + b"\x01", "checksum in EDID block 1"),
        (corrupt(18, 2), "version 2.4"),
        (corrupt(8, 0x80), "manufacturer"),
        (corrupt(9, 0x00), "manufacturer"),
        (interlaced(), "interlaced"),
        (sync_beyond_blanking(), "sync"),
    ],
)
def test_parser_rejects_malformed_edid_with_einval(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as raised:
        parse_edid(data)
    assert raised.value.errno == errno.EINVAL


def test_parser_needs_a_preferred_detailed_timing() -> None:
    block = bytearray(build_edid(1024, 768))
    block[54:72] = bytes((0, 0, 0, 0x10)) + bytes(14)
    with pytest.raises(ProtocolError, match="no preferred mode"):
        parse_edid(with_checksum(block))
    block = bytearray(build_edid(1024, 768))
    block[54 + 2] = 0
    block[54 + 4] &= 0x0F  # h active 0
    with pytest.raises(ProtocolError, match="0x768"):
        parse_edid(with_checksum(block))


def test_parser_accepts_extension_blocks_and_buffer_types() -> None:
    base = bytearray(build_edid(1280, 800, name="panel"))
    base[126] = 1
    extension = bytearray(128)
    extension[0] = 0x02  # CTA-861
    data = with_checksum(base) + with_checksum(extension)
    for view in (data, bytearray(data), memoryview(data)):
        info = parse_edid(view)
        assert (info.width, info.height, info.name) == (1280, 800, "panel")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        parse_edid(data)
    except ProtocolError as error:
        assert error.errno == errno.EINVAL


@settings(max_examples=300, deadline=None)
@given(
    sizes,
    sizes,
    st.lists(st.tuples(st.integers(8, 125), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_fuzz_mutated_blocks_with_valid_checksums(
    width: int, height: int, mutations: list[tuple[int, int]]
) -> None:
    block = bytearray(build_edid(width, height, unique_id="fuzz"))
    for offset, value in mutations:
        block[offset] = value
    try:
        info = parse_edid(with_checksum(block))
    except ProtocolError as error:
        assert error.errno == errno.EINVAL
    else:
        assert 1 <= info.width <= edid.MAX_ACTIVE and info.preferred.refresh_hz > 0
