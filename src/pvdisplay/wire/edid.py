"""EDID 1.4 base blocks: the one a backend answers GET_EDID with, and a reader.

The block describes a digital sRGB flat panel whose preferred (native)
timing is the connector's resolution, timed with VESA CVT reduced blanking
(version 1) at 60 Hz. Like a real panel, and like QEMU's generated EDID, it
also accepts the smaller 60 Hz VESA modes of the established timings
(640x480, 800x600, 1024x768) that fit in the native one, so a guest has
modes to switch to. Everything a guest may use is derived from the width,
the height and the connector's unique-id, so the same connector always gets
the same bytes.

`build_edid` raises ValueError for arguments no EDID can carry (they come from
the backend's own configuration); `parse_edid` raises ProtocolError(EINVAL)
for anything that is not a well-formed EDID (it reads a peer's bytes).
"""

import errno
import hashlib
import math
import string
from dataclasses import dataclass, replace
from typing import Final

from pvdisplay.wire.errors import ProtocolError

BLOCK_SIZE: Final = 128
MAX_BLOCKS: Final = 256
HEADER: Final = b"\x00\xff\xff\xff\xff\xff\xff\x00"

# A detailed timing descriptor stores active and blanking sizes in 12 bits and
# the pixel clock in 16 bits of 10 kHz.
MAX_ACTIVE: Final = 4095
MAX_BLANK: Final = 4095
MAX_PIXEL_CLOCK_KHZ: Final = 0xFFFF * 10
# edid-decode reports slower detailed timings as corrupt data.
MIN_PIXEL_CLOCK_KHZ: Final = 10_000

TEXT_LENGTH: Final = 13
DEFAULT_VENDOR: Final = "XEN"
DEFAULT_NAME: Final = "pvdisplay"
DEFAULT_YEAR: Final = 2024
REFRESH_HZ: Final = 60
# Physical size is reported as if the panel had 96 pixels per inch.
_MM_PER_PIXEL: Final = 25.4 / 96

# CVT 1.2 reduced blanking, version 1.
_RB_H_FRONT: Final = 48
_RB_H_SYNC: Final = 32
_RB_H_BACK: Final = 80
_RB_V_FRONT: Final = 3
# As V4L2 and edid-decode compute CVT; X.org's cvt tool uses 6.
_RB_MIN_V_BACK: Final = 7
_RB_MIN_V_BLANK_US: Final = 460
_CVT_CLOCK_STEP_HZ: Final = 250_000

_TAG_SERIAL: Final = 0xFF
_TAG_RANGE_LIMITS: Final = 0xFD
_TAG_NAME: Final = 0xFC
_TAG_DUMMY: Final = 0x10
_DESCRIPTOR_OFFSETS: Final = (54, 72, 90, 108)
_DESCRIPTOR_SIZE: Final = 18

# Digital input, 8 bits per primary, interface not specified.
_VIDEO_INPUT: Final = 0x80 | (0b010 << 4)
_GAMMA_2_2: Final = 120  # (gamma * 100) - 100
# RGB 4:4:4, sRGB is the default colour space, the preferred timing is native.
_FEATURES: Final = 0x04 | 0x02
# sRGB primaries and D65 white point (x, y) in red, green, blue, white order.
_SRGB_CHROMATICITY: Final = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060), (0.3127, 0.3290))
_PRINTABLE: Final = frozenset(string.ascii_letters + string.digits + string.punctuation + " ")


@dataclass(frozen=True)
class Timing:
    """One video mode as a detailed timing descriptor holds it."""

    pixel_clock_khz: int
    h_active: int
    h_front: int
    h_sync: int
    h_back: int
    v_active: int
    v_front: int
    v_sync: int
    v_back: int

    @property
    def h_total(self) -> int:
        return self.h_active + self.h_front + self.h_sync + self.h_back

    @property
    def v_total(self) -> int:
        return self.v_active + self.v_front + self.v_sync + self.v_back

    @property
    def refresh_hz(self) -> float:
        return self.pixel_clock_khz * 1000 / (self.h_total * self.v_total)

    @property
    def h_freq_khz(self) -> float:
        return self.pixel_clock_khz / self.h_total


@dataclass(frozen=True)
class EdidInfo:
    """What `parse_edid` reads from a base block."""

    vendor: str
    product_code: int
    serial_number: int
    week: int
    year: int
    version: tuple[int, int]
    preferred: Timing
    size_mm: tuple[int, int]
    name: str | None
    serial_string: str | None

    @property
    def width(self) -> int:
        return self.preferred.h_active

    @property
    def height(self) -> int:
        return self.preferred.v_active


_ESTABLISHED_OFFSET: Final = 35
ESTABLISHED_60HZ: Final = (
    # (byte, bit) in "established timings I & II", and the VESA DMT timing the bit names.
    ((35, 5), Timing(25_175, 640, 16, 96, 48, 480, 10, 2, 33)),
    ((35, 0), Timing(40_000, 800, 40, 128, 88, 600, 1, 4, 23)),
    ((36, 3), Timing(65_000, 1024, 24, 136, 160, 768, 3, 6, 29)),
)


def _established(width: int, height: int) -> list[tuple[tuple[int, int], Timing]]:
    return [
        (position, timing)
        for position, timing in ESTABLISHED_60HZ
        if timing.h_active <= width and timing.v_active <= height
    ]


def established_timings(width: int, height: int) -> list[Timing]:
    """The established 60 Hz modes a `width`x`height` block lists besides its preferred one."""
    return [timing for _, timing in _established(width, height)]


def _established_bits(width: int, height: int) -> bytes:
    bits = bytearray(3)  # bytes 35-37
    for (byte, bit), _ in _established(width, height):
        bits[byte - _ESTABLISHED_OFFSET] |= 1 << bit
    return bytes(bits)


def _cvt_v_sync(width: int, height: int) -> int:
    """CVT's vertical sync width, which encodes the aspect ratio.

    Ratios are matched the way edid-decode's CVT calculator matches them, so
    edid-decode recognises these timings.
    """
    if height * 4 // 3 == width:
        return 4
    if height * 16 // 9 == width:
        return 5
    if height * 16 // 10 == width:
        return 6
    if height % 4 == 0 and height * 5 // 4 == width:
        return 7
    if height * 15 // 9 == width:
        return 7
    return 10


def _cvt_rb_at(width: int, height: int, refresh_hz: int) -> Timing:
    v_sync = _cvt_v_sync(width, height)
    # Lines that fit in the minimum vertical blanking time, from the estimated
    # line period ((1 s / refresh) - 460 us) / height, in exact integer form.
    vbi_lines = (
        _RB_MIN_V_BLANK_US * height * refresh_hz // (1_000_000 - _RB_MIN_V_BLANK_US * refresh_hz)
        + 1
    )
    vbi_lines = max(vbi_lines, _RB_V_FRONT + v_sync + _RB_MIN_V_BACK)
    h_total = width + _RB_H_FRONT + _RB_H_SYNC + _RB_H_BACK
    steps = refresh_hz * (height + vbi_lines) * h_total // _CVT_CLOCK_STEP_HZ
    return Timing(
        # Tiny modes would round to no clock at all; one step makes them run faster instead.
        pixel_clock_khz=max(steps, 1) * _CVT_CLOCK_STEP_HZ // 1000,
        h_active=width,
        h_front=_RB_H_FRONT,
        h_sync=_RB_H_SYNC,
        h_back=_RB_H_BACK,
        v_active=height,
        v_front=_RB_V_FRONT,
        v_sync=v_sync,
        v_back=vbi_lines - _RB_V_FRONT - v_sync,
    )


def _padded_to_min_clock(timing: Timing) -> Timing:
    """Widen the blanking of a slow mode until it runs at 60 Hz from a 10 MHz clock."""
    if timing.pixel_clock_khz >= MIN_PIXEL_CLOCK_KHZ:
        return timing
    pixels_per_frame = math.ceil(MIN_PIXEL_CLOCK_KHZ * 1000 / REFRESH_HZ)
    # Lines are added only when the widest blanking is not enough.
    v_total = max(math.ceil(pixels_per_frame / (timing.h_active + MAX_BLANK)), timing.v_total)
    h_total = max(math.ceil(pixels_per_frame / v_total), timing.h_total)
    return replace(
        timing,
        pixel_clock_khz=MIN_PIXEL_CLOCK_KHZ,
        h_back=timing.h_back + h_total - timing.h_total,
        v_back=timing.v_back + v_total - timing.v_total,
    )


def preferred_timing(width: int, height: int) -> Timing:
    """The timing an EDID offers for `width`x`height`: CVT reduced blanking at 60 Hz.

    Two adjustments keep every size from 1x1 to 4095x4095 describable and
    accepted by edid-decode. A mode that would need more than the 655.35 MHz a
    descriptor can state runs at the highest whole refresh rate that fits
    (about 36 Hz at 4095x4095). A mode slower than 10 MHz (smaller than about
    400x300), which edid-decode takes for corrupt data, keeps 60 Hz with a
    10 MHz clock and longer back porches.
    """
    if not (1 <= width <= MAX_ACTIVE and 1 <= height <= MAX_ACTIVE):
        raise ValueError(f"{width}x{height} does not fit an EDID timing (1..{MAX_ACTIVE} each)")
    for refresh_hz in range(REFRESH_HZ, 0, -1):
        timing = _cvt_rb_at(width, height, refresh_hz)
        if timing.pixel_clock_khz <= MAX_PIXEL_CLOCK_KHZ:
            return _padded_to_min_clock(timing)
    raise AssertionError(f"no refresh rate fits {width}x{height}")  # 1 Hz always fits


def serial_string_for(unique_id: str) -> str:
    """The serial-string descriptor text for a connector's unique-id.

    An id that fits (up to 13 printable ASCII characters) is used as it is;
    a longer one, such as a UUID, becomes the first 13 hex digits of its
    SHA-256, which stays stable and distinct per id.
    """
    if _is_descriptor_text(unique_id):
        return unique_id
    return hashlib.sha256(unique_id.encode()).hexdigest()[:TEXT_LENGTH]


def _is_descriptor_text(text: str) -> bool:
    return (
        0 < len(text) <= TEXT_LENGTH
        and all(char in _PRINTABLE for char in text)
        and text == text.rstrip(" ")
    )


def _vendor_id(vendor: str) -> int:
    if len(vendor) != 3 or not all(char in string.ascii_uppercase for char in vendor):
        raise ValueError(f"vendor must be three letters A-Z, got {vendor!r}")
    packed = 0
    for char in vendor:
        packed = (packed << 5) | (ord(char) - ord("A") + 1)
    return packed


def _text_descriptor(tag: int, text: str) -> bytes:
    body = text.encode("ascii")
    if len(body) < TEXT_LENGTH:
        body = (body + b"\n").ljust(TEXT_LENGTH, b" ")
    return bytes((0, 0, 0, tag, 0)) + body


def _range_limits_descriptor(timings: list[Timing]) -> bytes:
    """Limits that just contain every mode the block lists."""
    refresh = [timing.refresh_hz for timing in timings]
    h_freq = [timing.h_freq_khz for timing in timings]
    max_clock_10mhz = -(-max(timing.pixel_clock_khz for timing in timings) // 10_000)
    limits = (
        math.floor(min(refresh)),
        math.ceil(max(refresh)),
        math.floor(min(h_freq)),
        math.ceil(max(h_freq)),
        max_clock_10mhz,
    )
    # Byte 10 = 0x01: range limits only, no GTF or CVT formula support.
    return bytes((0, 0, 0, _TAG_RANGE_LIMITS, 0, *limits, 0x01, 0x0A)) + b" " * 6


def _detailed_timing(timing: Timing, size_mm: tuple[int, int]) -> bytes:
    h_blank = timing.h_total - timing.h_active
    v_blank = timing.v_total - timing.v_active
    width_mm, height_mm = size_mm
    # Digital separate sync; CVT reduced blanking has +hsync and -vsync.
    flags = 0b0001_1000 | 0b0000_0010
    return bytes(
        (
            *(timing.pixel_clock_khz // 10).to_bytes(2, "little"),
            timing.h_active & 0xFF,
            h_blank & 0xFF,
            (timing.h_active >> 8) << 4 | h_blank >> 8,
            timing.v_active & 0xFF,
            v_blank & 0xFF,
            (timing.v_active >> 8) << 4 | v_blank >> 8,
            timing.h_front & 0xFF,
            timing.h_sync & 0xFF,
            (timing.v_front & 0x0F) << 4 | timing.v_sync & 0x0F,
            (timing.h_front >> 8) << 6
            | (timing.h_sync >> 8) << 4
            | (timing.v_front >> 4) << 2
            | timing.v_sync >> 4,
            width_mm & 0xFF,
            height_mm & 0xFF,
            (width_mm >> 8) << 4 | height_mm >> 8,
            0,
            0,
            flags,
        )
    )


def _chromaticity() -> bytes:
    coordinates = [round(value * 1024) for point in _SRGB_CHROMATICITY for value in point]
    low_bits = [value & 0b11 for value in coordinates]
    red_green = low_bits[0] << 6 | low_bits[1] << 4 | low_bits[2] << 2 | low_bits[3]
    blue_white = low_bits[4] << 6 | low_bits[5] << 4 | low_bits[6] << 2 | low_bits[7]
    return bytes((red_green, blue_white, *(value >> 2 for value in coordinates)))


def build_edid(
    width: int,
    height: int,
    *,
    unique_id: str | None = None,
    name: str = DEFAULT_NAME,
    vendor: str = DEFAULT_VENDOR,
    product_code: int = 1,
    serial_number: int = 0,
    week: int = 0,
    year: int = DEFAULT_YEAR,
) -> bytes:
    """A 128-byte EDID 1.4 base block for a `width`x`height` connector.

    `unique_id`, when non-empty, becomes a serial-string descriptor (see
    `serial_string_for`). `week` 0 means unspecified.
    """
    timing = preferred_timing(width, height)
    if not _is_descriptor_text(name):
        raise ValueError(f"name must be 1..{TEXT_LENGTH} printable ASCII characters, got {name!r}")
    if not 0 <= product_code <= 0xFFFF:
        raise ValueError(f"product code {product_code} does not fit 16 bits")
    if not 0 <= serial_number <= 0xFFFF_FFFF:
        raise ValueError(f"serial number {serial_number} does not fit 32 bits")
    if not 0 <= week <= 54:
        raise ValueError(f"week {week} is not 0 (unspecified) or 1..54")
    # EDID 1.4 counts years from 1990 in one byte and starts at 2006.
    if not 2006 <= year <= 1990 + 255:
        raise ValueError(f"year {year} is outside 2006..2245")

    size_mm = (
        min(max(round(width * _MM_PER_PIXEL), 1), MAX_ACTIVE),
        min(max(round(height * _MM_PER_PIXEL), 1), MAX_ACTIVE),
    )
    serial_descriptor = (
        _text_descriptor(_TAG_SERIAL, serial_string_for(unique_id))
        if unique_id
        else bytes((0, 0, 0, _TAG_DUMMY)) + bytes(14)
    )
    block = bytearray(
        HEADER
        + _vendor_id(vendor).to_bytes(2, "big")
        + product_code.to_bytes(2, "little")
        + serial_number.to_bytes(4, "little")
        + bytes((week, year - 1990, 1, 4, _VIDEO_INPUT))
        + bytes(max(round(mm / 10), 1) for mm in size_mm)
        + bytes((_GAMMA_2_2, _FEATURES))
        + _chromaticity()
        + _established_bits(width, height)
        + b"\x01\x01" * 8  # no standard timings
        + _detailed_timing(timing, size_mm)
        + _range_limits_descriptor([timing, *established_timings(width, height)])
        + _text_descriptor(_TAG_NAME, name)
        + serial_descriptor
        + bytes(1)  # no extension blocks
    )
    block.append(-sum(block) & 0xFF)
    return bytes(block)


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(errno.EINVAL, message)


def _parse_vendor(packed: int) -> str:
    codes = [(packed >> shift) & 0x1F for shift in (10, 5, 0)]
    if packed >> 15 or not all(1 <= code <= 26 for code in codes):
        raise _invalid(f"manufacturer id 0x{packed:04x} is not three letters")
    return "".join(chr(ord("A") + code - 1) for code in codes)


def _parse_detailed_timing(raw: bytes) -> tuple[Timing, tuple[int, int]]:
    pixel_clock = int.from_bytes(raw[0:2], "little")
    if pixel_clock == 0:
        raise _invalid("first descriptor is not a detailed timing (no preferred mode)")
    if raw[17] & 0x80:
        raise _invalid("interlaced preferred timing is not supported")
    h_active = raw[2] | (raw[4] >> 4) << 8
    h_blank = raw[3] | (raw[4] & 0x0F) << 8
    v_active = raw[5] | (raw[7] >> 4) << 8
    v_blank = raw[6] | (raw[7] & 0x0F) << 8
    h_front = raw[8] | (raw[11] >> 6) << 8
    h_sync = raw[9] | (raw[11] >> 4 & 0b11) << 8
    v_front = raw[10] >> 4 | (raw[11] >> 2 & 0b11) << 4
    v_sync = raw[10] & 0x0F | (raw[11] & 0b11) << 4
    if h_active == 0 or v_active == 0:
        raise _invalid(f"preferred timing is {h_active}x{v_active}")
    if h_front + h_sync > h_blank or v_front + v_sync > v_blank:
        raise _invalid("sync pulse lies outside the blanking interval")
    timing = Timing(
        pixel_clock_khz=pixel_clock * 10,
        h_active=h_active,
        h_front=h_front,
        h_sync=h_sync,
        h_back=h_blank - h_front - h_sync,
        v_active=v_active,
        v_front=v_front,
        v_sync=v_sync,
        v_back=v_blank - v_front - v_sync,
    )
    size_mm = (raw[12] | (raw[14] >> 4) << 8, raw[13] | (raw[14] & 0x0F) << 8)
    return timing, size_mm


def _descriptor_text(raw: bytes) -> str:
    text = raw[5:].split(b"\n", 1)[0].rstrip(b" \x00")
    return text.decode("ascii", errors="replace")


def parse_edid(data: bytes | bytearray | memoryview) -> EdidInfo:
    """Read an EDID (base block plus any extension blocks) a peer supplied."""
    edid = bytes(data)
    if len(edid) < BLOCK_SIZE or len(edid) % BLOCK_SIZE or len(edid) > BLOCK_SIZE * MAX_BLOCKS:
        raise _invalid(f"EDID of {len(edid)} bytes is not 1..{MAX_BLOCKS} blocks of {BLOCK_SIZE}")
    if edid[:8] != HEADER:
        raise _invalid(f"bad EDID header {edid[:8].hex()}")
    blocks = 1 + edid[126]
    if len(edid) != blocks * BLOCK_SIZE:
        raise _invalid(f"EDID announces {blocks} blocks but is {len(edid)} bytes")
    for index in range(blocks):
        if sum(edid[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]) & 0xFF:
            raise _invalid(f"bad checksum in EDID block {index}")
    if edid[18] != 1:
        raise _invalid(f"EDID version {edid[18]}.{edid[19]} is not 1.x")

    first = _DESCRIPTOR_OFFSETS[0]
    preferred, size_mm = _parse_detailed_timing(edid[first : first + _DESCRIPTOR_SIZE])
    texts: dict[int, str] = {}
    for offset in _DESCRIPTOR_OFFSETS[1:]:
        raw = edid[offset : offset + _DESCRIPTOR_SIZE]
        if raw[:3] == b"\x00\x00\x00" and raw[3] in (_TAG_NAME, _TAG_SERIAL):
            texts.setdefault(raw[3], _descriptor_text(raw))
    return EdidInfo(
        vendor=_parse_vendor(int.from_bytes(edid[8:10], "big")),
        product_code=int.from_bytes(edid[10:12], "little"),
        serial_number=int.from_bytes(edid[12:16], "little"),
        week=edid[16],
        year=1990 + edid[17],
        version=(edid[18], edid[19]),
        preferred=preferred,
        size_mm=size_mm,
        name=texts.get(_TAG_NAME),
        serial_string=texts.get(_TAG_SERIAL),
    )
