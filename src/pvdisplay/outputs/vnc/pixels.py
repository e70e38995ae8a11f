"""RFB pixel formats and the conversions between guest frames and client pixels.

Frames travel inside the server as "canonical" HxW uint32 arrays holding 0x00RRGGBB,
which is exactly the memory of a DRM XRGB8888 framebuffer with the X byte cleared, so
the common guest format needs no conversion at all. Each client then gets its frames in
the pixel format it asked for with SetPixelFormat (RFC 6143 section 7.4).
"""

import errno
import struct
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pvdisplay.outputs.feed.mirror import Frame
from pvdisplay.wire.errors import ProtocolError

_PIXEL_FORMAT = struct.Struct(">BBBBHHHBBB3x")
PIXEL_FORMAT_SIZE: Final = _PIXEL_FORMAT.size


@dataclass(frozen=True)
class RfbPixelFormat:
    """PIXEL_FORMAT as RFB sends it: true-colour channels by maximum and shift."""

    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        order = ">" if self.big_endian else "<"
        return np.dtype(f"{order}u{self.bytes_per_pixel}")

    @property
    def compact_slice(self) -> slice:
        """Which bytes of a pixel ZRLE's CPIXEL keeps (RFC 6143 7.7.6)."""
        if self.bits_per_pixel != 32 or self.depth > 24 or not self.true_colour:
            return slice(0, self.bytes_per_pixel)
        used = 0
        for maximum, shift in self._channels():
            used |= maximum << shift
        if used < 1 << 24:  # in the low three bytes of the word
            return slice(1, 4) if self.big_endian else slice(0, 3)
        if used & 0xFF == 0:  # in the high three bytes
            return slice(0, 3) if self.big_endian else slice(1, 4)
        return slice(0, 4)

    def _channels(self) -> tuple[tuple[int, int], ...]:
        return (
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        )

    def pack(self) -> bytes:
        return _PIXEL_FORMAT.pack(
            self.bits_per_pixel,
            self.depth,
            self.big_endian,
            self.true_colour,
            self.red_max,
            self.green_max,
            self.blue_max,
            self.red_shift,
            self.green_shift,
            self.blue_shift,
        )

    @classmethod
    def unpack(cls, data: bytes) -> "RfbPixelFormat":
        """Decode and check a client's PIXEL_FORMAT; what we cannot honour is EINVAL."""
        if len(data) != PIXEL_FORMAT_SIZE:
            raise ProtocolError(errno.EINVAL, f"pixel format is {len(data)} bytes")
        bpp, depth, big, true_colour, rmax, gmax, bmax, rsh, gsh, bsh = _PIXEL_FORMAT.unpack(data)
        fmt = cls(bpp, depth, big != 0, true_colour != 0, rmax, gmax, bmax, rsh, gsh, bsh)
        if bpp not in {8, 16, 32}:
            raise ProtocolError(errno.EINVAL, f"{bpp} bits per pixel")
        if not fmt.true_colour:
            raise ProtocolError(errno.EINVAL, "colour-map pixel formats are not supported")
        for maximum, shift in fmt._channels():
            if maximum == 0 or maximum & (maximum + 1) or maximum > 255:
                raise ProtocolError(errno.EINVAL, f"channel maximum {maximum} is not 2^n-1")
            if (maximum << shift) >= 1 << bpp:
                raise ProtocolError(errno.EINVAL, f"channel {maximum}<<{shift} exceeds {bpp} bits")
        return fmt


SERVER_FORMAT: Final = RfbPixelFormat(32, 24, False, True, 255, 255, 255, 16, 8, 0)
"""What ServerInit announces: the memory layout of XRGB8888 (and of canonical frames)."""


def client_pixels(frame: Frame, fmt: RfbPixelFormat) -> npt.NDArray[np.unsignedinteger[Any]]:
    """`frame` (or a region of it) as an array of the client's pixel values and byte order."""
    if fmt == SERVER_FORMAT:
        return frame
    red = (frame >> 16) & 0xFF
    green = (frame >> 8) & 0xFF
    blue = frame & 0xFF
    value = np.zeros(frame.shape, dtype=np.uint32)
    for channel, (maximum, shift) in zip((red, green, blue), fmt._channels(), strict=True):
        scaled = channel if maximum == 255 else (channel * maximum + 127) // 255
        value |= scaled << shift
    return value.astype(fmt.dtype)


def pixel_bytes(frame: Frame, fmt: RfbPixelFormat) -> bytes:
    """Raw-encoding bytes of a region: each pixel in the client's format, row by row."""
    return client_pixels(frame, fmt).tobytes()
