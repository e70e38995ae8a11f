"""Pixel formats: codes against compiled system headers, and conversions against known pixels."""

import errno
import mmap
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.fourcc import FORMATS, PixelFormat


def header_codes(compile_c: Callable[..., Path]) -> dict[str, dict[str, int]]:
    output = subprocess.run(
        [compile_c("fourcc_codes")], check=True, capture_output=True, text=True
    ).stdout
    codes: dict[str, dict[str, int]] = {}
    for line in output.splitlines():
        source, name, value = line.split()
        codes.setdefault(source, {})[name] = int(value)
    return codes


def test_codes_match_v4l2_header(compile_c: Callable[..., Path]) -> None:
    v4l2 = header_codes(compile_c)["v4l2"]
    assert len(v4l2) == 7
    for name, code in v4l2.items():
        assert fourcc.by_name(name).fourcc == code, name


def test_codes_match_drm_header_when_installed(compile_c: Callable[..., Path]) -> None:
    drm = header_codes(compile_c).get("drm")
    if drm is None:
        pytest.skip("drm_fourcc.h is not installed (libdrm-dev); V4L2 codes were checked")
    assert drm == {fmt.name: fmt.fourcc for fmt in FORMATS}


def test_displif_defines_no_pixel_format_macros_of_its_own() -> None:
    # If a future libxen-dev adds them, they must be compared in tests/c/fourcc_codes.c.
    macros = subprocess.run(
        ["gcc", "-dM", "-E", "-x", "c", "-"],
        input="#include <xen/io/displif.h>\n",
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = [line.split()[1] for line in macros.splitlines()]
    assert "XENDISPL_OP_FB_ATTACH" in names
    assert [name for name in names if "PIXEL" in name or "FOURCC" in name] == []


@pytest.mark.parametrize(
    ("name", "text", "bits", "alpha"),
    [
        ("RGB565", "RG16", 16, False),
        ("RGB888", "RG24", 24, False),
        ("XRGB8888", "XR24", 32, False),
        ("ARGB8888", "AR24", 32, True),
        ("XRGB4444", "XR12", 16, False),
        ("ARGB4444", "AR12", 16, True),
        ("XRGB1555", "XR15", 16, False),
        ("ARGB1555", "AR15", 16, True),
        ("YUYV", "YUYV", 16, False),
    ],
)
def test_format_table(name: str, text: str, bits: int, alpha: bool) -> None:
    fmt = fourcc.by_name(name.lower())
    assert fmt.name == name
    assert fourcc.fourcc_text(fmt.fourcc) == text
    assert fourcc.by_fourcc(fourcc.fourcc_code(text)) is fmt
    assert (fmt.bits_per_pixel, fmt.bytes_per_pixel, fmt.has_alpha) == (bits, bits // 8, alpha)


def test_formats_are_xen_front_plane_formats_in_order() -> None:
    assert [fmt.name for fmt in FORMATS] == [
        "RGB565", "RGB888", "XRGB8888", "ARGB8888", "XRGB4444",
        "ARGB4444", "XRGB1555", "ARGB1555", "YUYV",
    ]  # fmt: skip


@given(st.sampled_from(FORMATS), st.integers(1, 1 << 20))
def test_min_pitch_is_ceil_of_bits(fmt: PixelFormat, width: int) -> None:
    # YUYV rows hold whole Y0 U Y1 V pairs, so an odd width rounds up a pixel.
    pixels = width + width % 2 if fmt is fourcc.YUYV else width
    assert fmt.min_pitch(width) == -(-pixels * fmt.bits_per_pixel // 8)


def test_unknown_fourcc_is_einval_naming_the_code() -> None:
    with pytest.raises(ProtocolError) as raised:
        fourcc.by_fourcc(fourcc.fourcc_code("NV12"))
    assert raised.value.errno == errno.EINVAL
    assert "NV12" in str(raised.value)
    with pytest.raises(ProtocolError, match="0x00000001"):
        fourcc.by_fourcc(1)


def test_unknown_name_is_value_error_listing_known() -> None:
    with pytest.raises(ValueError, match="XRGB8888"):
        fourcc.by_name("BGRA8888")


def test_fourcc_text_round_trip_and_bad_input() -> None:
    assert fourcc.fourcc_code("XR24") == 0x34325258
    assert fourcc.fourcc_text(0x34325258) == "XR24"
    assert fourcc.fourcc_text(0x00000000) == "0x00000000"
    with pytest.raises(ValueError):
        fourcc.fourcc_code("XR2")


# Pure red, green and blue as literal bytes in memory (little-endian words).
PRIMARIES = {
    "RGB565": (b"\x00\xf8", b"\xe0\x07", b"\x1f\x00"),
    "RGB888": (b"\x00\x00\xff", b"\x00\xff\x00", b"\xff\x00\x00"),
    "XRGB8888": (b"\x00\x00\xff\x5a", b"\x00\xff\x00\x5a", b"\xff\x00\x00\x5a"),
    "ARGB8888": (b"\x00\x00\xff\xff", b"\x00\xff\x00\xff", b"\xff\x00\x00\xff"),
    "XRGB4444": (b"\x00\x0f", b"\xf0\x00", b"\x0f\x00"),
    "ARGB4444": (b"\x00\xff", b"\xf0\xf0", b"\x0f\xf0"),
    "XRGB1555": (b"\x00\x7c", b"\xe0\x03", b"\x1f\x00"),
    "ARGB1555": (b"\x00\xfc", b"\xe0\x83", b"\x1f\x80"),
}


@pytest.mark.parametrize("name", PRIMARIES)
def test_primaries(name: str) -> None:
    fmt = fourcc.by_name(name)
    buf = np.frombuffer(b"".join(PRIMARIES[name]), dtype=np.uint8)
    rgba = fourcc.to_rgba(fmt, buf, 3, 1, len(buf))
    assert rgba.tolist() == [[[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]]]
    assert fourcc.to_rgb(fmt, buf, 3, 1, len(buf)).tolist() == [
        [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    ]


def test_xrgb8888_memory_order_is_b_g_r_x() -> None:
    buf = np.array([0x11, 0x22, 0x33, 0x44], dtype=np.uint8)
    assert fourcc.to_rgba(fourcc.XRGB8888, buf, 1, 1, 4).tolist() == [[[0x33, 0x22, 0x11, 255]]]
    assert fourcc.to_rgba(fourcc.ARGB8888, buf, 1, 1, 4).tolist() == [[[0x33, 0x22, 0x11, 0x44]]]


def test_alpha_channels_are_read() -> None:
    transparent_then_opaque = {
        fourcc.ARGB8888: ("0000ff000000ffff", [0, 255]),
        fourcc.ARGB4444: ("ff0f00f0", [0, 255]),
        fourcc.ARGB1555: ("ff7f0080", [0, 255]),
    }
    for fmt, (hex_bytes, alphas) in transparent_then_opaque.items():
        buf = np.frombuffer(bytes.fromhex(hex_bytes), dtype=np.uint8)
        assert fourcc.to_rgba(fmt, buf, 2, 1, len(buf))[0, :, 3].tolist() == alphas, fmt.name
    semi = np.frombuffer(bytes.fromhex("000080800000807f"), dtype=np.uint8)
    assert fourcc.to_rgba(fourcc.ARGB8888, semi, 2, 1, 8)[0, :, 3].tolist() == [0x80, 0x7F]


# (shift, width) of R, G, B, A in each 16-bit word, written out here independently
# of the module from drm_fourcc.h's layout comments.
LAYOUTS16 = {
    "RGB565": ((11, 5), (5, 6), (0, 5), None),
    "XRGB4444": ((8, 4), (4, 4), (0, 4), None),
    "ARGB4444": ((8, 4), (4, 4), (0, 4), (12, 4)),
    "XRGB1555": ((10, 5), (5, 5), (0, 5), None),
    "ARGB1555": ((10, 5), (5, 5), (0, 5), (15, 1)),
}


def pack_pixel(name: str, rgba: list[int]) -> bytes:
    """One pixel's bytes from 8-bit RGBA, truncating to the format's depth."""
    if name in ("XRGB8888", "ARGB8888"):
        return bytes((rgba[2], rgba[1], rgba[0], rgba[3] if name == "ARGB8888" else 0))
    if name == "RGB888":
        return bytes((rgba[2], rgba[1], rgba[0]))
    word = 0
    for value, field in zip(rgba, LAYOUTS16[name], strict=True):
        if field is not None:
            shift, bits = field
            word |= (value >> (8 - bits)) << shift
    return struct.pack("<H", word)


def meaningful_bits(name: str, raw: bytes) -> bytes:
    """The pixel with its X (don't care) bits cleared."""
    if name == "XRGB8888":
        return raw[:3] + b"\x00"
    if name in LAYOUTS16:
        mask = sum(((1 << bits) - 1) << shift for shift, bits in filter(None, LAYOUTS16[name]))
        return struct.pack("<H", struct.unpack("<H", raw)[0] & mask)
    return raw


RGB_FORMATS = [fmt for fmt in FORMATS if fmt is not fourcc.YUYV]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RGB_FORMATS), st.data())
def test_rgb_formats_round_trip_losslessly(fmt: PixelFormat, data: st.DataObject) -> None:
    width = data.draw(st.integers(1, 9))
    height = data.draw(st.integers(1, 5))
    padding = data.draw(st.integers(0, 7))
    pitch = fmt.min_pitch(width) + padding
    raw = data.draw(st.binary(min_size=pitch * height, max_size=pitch * height))
    buf = np.frombuffer(raw, dtype=np.uint8)

    rgba = fourcc.to_rgba(fmt, buf, width, height, pitch)

    assert rgba.shape == (height, width, 4)
    assert np.array_equal(fourcc.to_rgb(fmt, buf, width, height, pitch), rgba[..., :3])
    size = fmt.bytes_per_pixel
    for row in range(height):
        for col in range(width):
            start = row * pitch + col * size
            original = meaningful_bits(fmt.name, raw[start : start + size])
            assert pack_pixel(fmt.name, rgba[row, col].tolist()) == original
            if not fmt.has_alpha:
                assert rgba[row, col, 3] == 255


def bt601_limited(red: int, green: int, blue: int) -> tuple[int, int, int]:
    """Textbook BT.601 studio-swing Y'CbCr of an 8-bit R'G'B' colour."""
    r, g, b = red / 255, green / 255, blue / 255
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(cb), round(cr)


def yuyv_pair(red: int, green: int, blue: int) -> bytes:
    y, u, v = bt601_limited(red, green, blue)
    return bytes((y, u, y, v))


def test_yuyv_reference_colours() -> None:
    colours = [(255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    buf = np.frombuffer(b"".join(yuyv_pair(*c) for c in colours), dtype=np.uint8)
    rgb = fourcc.to_rgb(fourcc.YUYV, buf, 10, 1, len(buf))
    assert rgb[0, 0::2].tolist() == rgb[0, 1::2].tolist()
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 2].tolist() == [0, 0, 0]
    assert np.abs(rgb[0, 4::2].astype(int) - np.array(colours[2:])).max() <= 2


@settings(max_examples=100, deadline=None)
@given(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
def test_yuyv_inverts_bt601_within_quantisation(colour: tuple[int, int, int]) -> None:
    buf = np.frombuffer(yuyv_pair(*colour), dtype=np.uint8)
    rgba = fourcc.to_rgba(fourcc.YUYV, buf, 2, 1, 4)
    assert np.abs(rgba[0, :, :3].astype(int) - np.array(colour)).max() <= 2
    assert rgba[0, :, 3].tolist() == [255, 255]


def test_yuyv_pairs_share_chroma_and_clip_out_of_range() -> None:
    # Y0=235, Y1=16 share strong red chroma (U=128, V=255); then Y0=0 with U=V=0.
    buf = np.array([235, 128, 16, 255, 0, 0, 255, 0], dtype=np.uint8)
    rgb = fourcc.to_rgb(fourcc.YUYV, buf, 3, 1, 8)
    assert rgb[0, 0].tolist() == [255, 152, 255]  # R and B clip at 255
    assert rgb[0, 1].tolist() == [203, 0, 0]  # G clips at 0
    assert rgb[0, 2].tolist() == [0, 136, 0]  # odd width: the pair's second pixel is dropped


def test_padding_is_not_read_and_last_row_may_be_short() -> None:
    fmt = fourcc.XRGB8888
    width, height, pitch = 2, 3, 12
    raw = bytearray(b"\xee" * (pitch * (height - 1) + 8))
    for row in range(height):
        raw[row * pitch : row * pitch + 8] = bytes((row, 0, 0, 0, 0, row, 0, 0))
    rgb = fourcc.to_rgb(fmt, np.frombuffer(bytes(raw), dtype=np.uint8), width, height, pitch)
    assert rgb.tolist() == [[[0, 0, row], [0, row, 0]] for row in range(height)]


@pytest.mark.parametrize(
    ("width", "height", "pitch", "size", "match"),
    [
        (0, 1, 8, 64, "empty"),
        (2, 0, 8, 64, "empty"),
        (2, 2, 7, 64, "pitch 7"),
        (2, 2, 8, 15, "needs 16 bytes"),
    ],
)
def test_geometry_outside_the_buffer_is_einval(
    width: int, height: int, pitch: int, size: int, match: str
) -> None:
    buf = np.zeros(size, dtype=np.uint8)
    with pytest.raises(ProtocolError, match=match) as raised:
        fourcc.to_rgb(fourcc.XRGB8888, buf, width, height, pitch)
    assert raised.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "buf",
    [np.zeros(16, dtype=np.uint16), np.zeros((2, 8), dtype=np.uint8), np.zeros(32, np.uint8)[::2]],
)
def test_buffer_must_be_contiguous_bytes(buf: npt.NDArray[np.generic]) -> None:
    with pytest.raises(TypeError):
        fourcc.to_rgb(fourcc.RGB565, buf, 2, 2, 4)  # type: ignore[arg-type]


def test_reads_shared_memory_in_place_and_returns_a_snapshot() -> None:
    width, height, pitch = 64, 32, 64 * 4 + 64
    fd = os.memfd_create("fourcc-test")
    try:
        os.ftruncate(fd, mmap.PAGESIZE * 3)
        with mmap.mmap(fd, mmap.PAGESIZE * 3) as shared:
            view = np.frombuffer(shared, dtype=np.uint8)
            view[: pitch * height] = 0x80
            rgb = fourcc.to_rgb(fourcc.XRGB8888, view, width, height, pitch)
            view[:] = 0  # the guest draws the next frame
            assert not np.shares_memory(rgb, view)
            assert rgb.flags.c_contiguous
            assert (rgb == 0x80).all()
            del view
    finally:
        os.close(fd)
