"""The DRM pixel formats a displif framebuffer may use, and how to read them.

displif's FB_ATTACH carries `pixel_format` as a DRM fourcc code
(`drm_fourcc.h`); these are the nine formats Linux xen-front offers. DRM
formats are little-endian: the layout comment "[31:0] x:R:G:B" describes one
32-bit little-endian word, so an XRGB8888 pixel sits in memory as the bytes
B, G, R, X. Every conversion here works on bytes and explicit little-endian
words, so it reads the same on any host.

Conversions take a flat uint8 view of the buffer (typically a zero-copy view
of mapped grant pages), never modify it, and return a freshly allocated packed
HxWx3 (RGB) or HxWx4 (RGBA) uint8 array: shared memory can change under a
reader, so a snapshot must not alias it.
"""

import errno
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from pvdisplay.wire.errors import ProtocolError

Pixels = npt.NDArray[np.uint8]


def fourcc_code(text: str) -> int:
    """The fourcc code of a four-character string, as DRM's `fourcc_code()` builds it."""
    raw = text.encode("ascii")
    if len(raw) != 4:
        raise ValueError(f"a fourcc is four ASCII characters, got {text!r}")
    return int.from_bytes(raw, "little")


def fourcc_text(code: int) -> str:
    """A fourcc code as its four characters, or as hex when they are not printable."""
    raw = (code & 0xFFFFFFFF).to_bytes(4, "little")
    if code == code & 0xFFFFFFFF and all(0x20 <= byte < 0x7F for byte in raw):
        return raw.decode("ascii")
    return f"0x{code:08x}"


@dataclass(frozen=True)
class PixelFormat:
    """One DRM format: its fourcc, its size, and how pixels pack into a row.

    A block is the smallest unit a row is made of: one pixel for the RGB
    formats, two pixels (Y0 U Y1 V) for YUYV.
    """

    name: str
    fourcc: int
    bits_per_pixel: int
    has_alpha: bool
    pixels_per_block: int = 1

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    @property
    def bytes_per_block(self) -> int:
        return self.bytes_per_pixel * self.pixels_per_block

    def min_pitch(self, width: int) -> int:
        """Bytes one row of `width` pixels needs: ceil(width * bpp / 8), in whole blocks."""
        blocks = -(-width // self.pixels_per_block)
        return blocks * self.bytes_per_block


RGB565: Final = PixelFormat("RGB565", fourcc_code("RG16"), 16, has_alpha=False)
RGB888: Final = PixelFormat("RGB888", fourcc_code("RG24"), 24, has_alpha=False)
XRGB8888: Final = PixelFormat("XRGB8888", fourcc_code("XR24"), 32, has_alpha=False)
ARGB8888: Final = PixelFormat("ARGB8888", fourcc_code("AR24"), 32, has_alpha=True)
XRGB4444: Final = PixelFormat("XRGB4444", fourcc_code("XR12"), 16, has_alpha=False)
ARGB4444: Final = PixelFormat("ARGB4444", fourcc_code("AR12"), 16, has_alpha=True)
XRGB1555: Final = PixelFormat("XRGB1555", fourcc_code("XR15"), 16, has_alpha=False)
ARGB1555: Final = PixelFormat("ARGB1555", fourcc_code("AR15"), 16, has_alpha=True)
YUYV: Final = PixelFormat("YUYV", fourcc_code("YUYV"), 16, has_alpha=False, pixels_per_block=2)

# In the order Linux xen-front advertises them on its plane.
FORMATS: Final = (
    RGB565,
    RGB888,
    XRGB8888,
    ARGB8888,
    XRGB4444,
    ARGB4444,
    XRGB1555,
    ARGB1555,
    YUYV,
)

_BY_FOURCC: Final = {fmt.fourcc: fmt for fmt in FORMATS}
_BY_NAME: Final = {fmt.name: fmt for fmt in FORMATS}


def by_fourcc(code: int) -> PixelFormat:
    """The format a peer named; an unsupported code is the peer's error (EINVAL)."""
    try:
        return _BY_FOURCC[code]
    except KeyError:
        raise ProtocolError(errno.EINVAL, f"unsupported pixel format {fourcc_text(code)}") from None


def by_name(name: str) -> PixelFormat:
    """A format by its DRM name without the prefix, case-insensitive ("xrgb8888")."""
    try:
        return _BY_NAME[name.upper()]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise ValueError(f"unknown pixel format {name!r}; known: {known}") from None


def _blocks(fmt: PixelFormat, buf: Pixels, width: int, height: int, pitch: int) -> Pixels:
    """A read-only HxBxN view of the buffer's blocks, after checking it holds them."""
    if buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags.c_contiguous:
        raise TypeError(f"expected a contiguous 1-D uint8 array, got {buf.dtype} {buf.shape}")
    if width <= 0 or height <= 0:
        raise ProtocolError(errno.EINVAL, f"framebuffer {width}x{height} is empty")
    row_bytes = fmt.min_pitch(width)
    if pitch < row_bytes:
        raise ProtocolError(
            errno.EINVAL, f"pitch {pitch} < {row_bytes} bytes of {width} {fmt.name} pixels"
        )
    needed = pitch * (height - 1) + row_bytes
    if buf.size < needed:
        raise ProtocolError(
            errno.EINVAL,
            f"{width}x{height} {fmt.name} at pitch {pitch} needs {needed} bytes,"
            f" buffer has {buf.size}",
        )
    return np.lib.stride_tricks.as_strided(
        buf,
        shape=(height, row_bytes // fmt.bytes_per_block, fmt.bytes_per_block),
        strides=(pitch, fmt.bytes_per_block, 1),
        writeable=False,
    )


def _expansion(bits: int) -> npt.NDArray[np.uint32]:
    """Table widening a `bits`-wide channel to 8 bits by bit replication.

    Replication maps 0 to 0 and the maximum to 255, and truncating the result
    back to `bits` bits gives the original value, so no information is lost.
    """
    values = np.arange(1 << bits, dtype=np.uint32)
    widened = np.zeros_like(values)
    shift = 8 - bits
    while shift > -bits:
        widened |= values << shift if shift >= 0 else values >> -shift
        shift -= bits
    return widened


# Channel layout of the 16-bit packed formats: (shift, width) of R, G, B, A in the word.
_PACKED16: Final = {
    "RGB565": ((11, 5), (5, 6), (0, 5), None),
    "XRGB4444": ((8, 4), (4, 4), (0, 4), None),
    "ARGB4444": ((8, 4), (4, 4), (0, 4), (12, 4)),
    "XRGB1555": ((10, 5), (5, 5), (0, 5), None),
    "ARGB1555": ((10, 5), (5, 5), (0, 5), (15, 1)),
}


@functools.cache
def _rgba_table(name: str) -> npt.NDArray[np.uint32]:
    """RGBA bytes of every 16-bit pixel value, one 4-byte entry per value.

    Looking a whole frame up in a 256 KiB table is several times faster than
    unpacking each channel with shifts and masks.
    """
    words = np.arange(1 << 16, dtype=np.uint32)
    rgba = np.empty((1 << 16, 4), dtype=np.uint8)
    for index, field in enumerate(_PACKED16[name]):
        if field is None:
            rgba[:, index] = 255
        else:
            shift, bits = field
            rgba[:, index] = _expansion(bits)[(words >> shift) & ((1 << bits) - 1)]
    return rgba.view(np.uint32)[:, 0]


def _fill_packed16(fmt: PixelFormat, blocks: Pixels, out: Pixels) -> None:
    # DRM's [15:0] notation describes each pixel as one little-endian word.
    words = blocks.view(np.dtype("<u2"))[..., 0]
    table = _rgba_table(fmt.name)
    if out.shape[-1] == 4:
        np.take(table, words, out=out.view(np.uint32)[..., 0], mode="clip")
    else:
        rgba = np.take(table, words).view(np.uint8).reshape(*words.shape, 4)
        # Channel by channel: numpy copies long rows fast and 3-byte pixels slowly.
        for index in range(3):
            out[..., index] = rgba[..., index]


def _fill_bgr_bytes(fmt: PixelFormat, blocks: Pixels, out: Pixels) -> None:
    # Little-endian x:R:G:B and R:G:B put blue in the lowest byte.
    out[..., 0] = blocks[..., 2]
    out[..., 1] = blocks[..., 1]
    out[..., 2] = blocks[..., 0]
    if fmt.has_alpha and out.shape[-1] == 4:
        out[..., 3] = blocks[..., 3]


# BT.601 limited range ("studio swing"): Y in 16..235, U and V in 16..240
# around 128. Rows of the matrix give R, G, B from (Y-16, U-128, V-128).
_KR: Final = 0.299
_KB: Final = 0.114
_KG: Final = 1.0 - _KR - _KB
_Y_SCALE: Final = 255.0 / 219.0
_C_SCALE: Final = 255.0 / 224.0
_YUV_TO_RGB: Final = np.array(
    [
        [_Y_SCALE, 0.0, _C_SCALE * 2 * (1 - _KR)],
        [
            _Y_SCALE,
            -_C_SCALE * 2 * (1 - _KB) * _KB / _KG,
            -_C_SCALE * 2 * (1 - _KR) * _KR / _KG,
        ],
        [_Y_SCALE, _C_SCALE * 2 * (1 - _KB), 0.0],
    ],
    dtype=np.float32,
)


def _fill_yuyv(fmt: PixelFormat, blocks: Pixels, out: Pixels) -> None:
    # Memory order per two pixels: Y0 U Y1 V (little-endian [31:0] Cr:Y1:Cb:Y0).
    # Both pixels of a pair share the pair's chroma.
    height, width = out.shape[:2]
    luma = blocks[..., 0::2].astype(np.float32).reshape(height, -1)[:, :width] - 16.0
    chroma = np.repeat(blocks[..., 1::2].astype(np.float32) - 128.0, 2, axis=1)[:, :width]
    for index, (y_gain, u_gain, v_gain) in enumerate(_YUV_TO_RGB):
        channel = luma * y_gain + chroma[..., 0] * u_gain + chroma[..., 1] * v_gain
        out[..., index] = np.clip(np.rint(channel), 0, 255)


_FILLERS: Final[dict[str, Callable[[PixelFormat, Pixels, Pixels], None]]] = {
    "RGB565": _fill_packed16,
    "RGB888": _fill_bgr_bytes,
    "XRGB8888": _fill_bgr_bytes,
    "ARGB8888": _fill_bgr_bytes,
    "XRGB4444": _fill_packed16,
    "ARGB4444": _fill_packed16,
    "XRGB1555": _fill_packed16,
    "ARGB1555": _fill_packed16,
    "YUYV": _fill_yuyv,
}


def _convert(
    fmt: PixelFormat, buf: Pixels, width: int, height: int, pitch: int, *, channels: int
) -> Pixels:
    blocks = _blocks(fmt, buf, width, height, pitch)
    out = np.empty((height, width, channels), dtype=np.uint8)
    if channels == 4 and not fmt.has_alpha:
        out[..., 3] = 255
    _FILLERS[fmt.name](fmt, blocks, out)
    return out


def to_rgb(fmt: PixelFormat, buf: Pixels, width: int, height: int, pitch: int) -> Pixels:
    """Packed HxWx3 RGB of a `width`x`height` image whose rows start `pitch` bytes apart.

    Alpha, if the format has it, is dropped (not composited). Raises
    ProtocolError(EINVAL) when the geometry does not fit the buffer.
    """
    return _convert(fmt, buf, width, height, pitch, channels=3)


def to_rgba(fmt: PixelFormat, buf: Pixels, width: int, height: int, pitch: int) -> Pixels:
    """Packed HxWx4 RGBA; formats without alpha (X bits included) come out opaque."""
    return _convert(fmt, buf, width, height, pitch, channels=4)
