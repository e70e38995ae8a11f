"""The smallest way to send each changed region of a connector's picture.

The feed keeps each connector's picture in the guest's own pixel format
(`pvdisplay.outputs.feed.mirror.GuestMirror`) and its tile clock tells each viewer what
changed since its last frame. A mask of changed tiles becomes rectangles (runs along a tile
row, then identical runs down consecutive rows, at most `BAND_ROWS` pixels high so a
large change becomes bands that can be encoded in parallel), each sent as JPEG or as
lossless PNG, whichever a trial on the rectangle (or on a sample of its rows, for tall
ones) says is smaller. When most of the picture changed (full-screen motion), its
bounding box goes as one JPEG instead: one encode, one decode in the browser. JPEG is
encoded straight from the guest's bytes where the format allows; only PNG (and JPEG of
the 16-bit formats) converts to RGB first.
"""

import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import simplejpeg

from pvdisplay.outputs.feed.mirror import TILE, GuestMirror, TileMask, runs
from pvdisplay.outputs.feed.rect import Rect
from pvdisplay.wire import fourcc
from pvdisplay.wire.fourcc import PixelFormat

Rgb = npt.NDArray[np.uint8]
Kind = Literal["jpeg", "png"]

BAND_ROWS: Final = 128
# Tall rectangles are judged on this many of their middle rows, not encoded twice whole.
SAMPLE_ROWS: Final = 16
# A change covering at least this share of the tiles is motion: sent as one JPEG.
MOTION_SHARE: Final = 0.5
LOSSLESS: Final = "lossless"
DEFAULT_QUALITY: Final = 80
HEADER_LENGTH: Final = struct.Struct("<I")

Quality = int | Literal["lossless"]
"""JPEG quality 1..100 (lossless PNG still wins where it is smaller), or lossless only."""


def parse_quality(text: str) -> Quality:
    if text == LOSSLESS:
        return LOSSLESS
    if text.isdecimal() and 1 <= int(text) <= 100:
        return int(text)
    raise ValueError(f"quality must be 1..100 or {LOSSLESS!r}, not {text!r}")


@dataclass(frozen=True)
class Picture:
    """`height` rows of `stride` bytes of `fmt` pixels (a `GuestMirror`'s, or a test's)."""

    fmt: PixelFormat
    width: int
    height: int
    stride: int
    data: npt.NDArray[np.uint8]  # 1-D, stride * height bytes

    @classmethod
    def of(cls, mirror: GuestMirror) -> "Picture":
        return cls(mirror.fmt, mirror.width, mirror.height, mirror.stride, mirror.data)

    @property
    def geometry(self) -> tuple[int, int, int, int]:
        return self.fmt.fourcc, self.width, self.height, self.stride

    def rgb(self, rect: Rect) -> Rgb:
        """`rect` converted to HxWx3 RGB."""
        start = rect.y * self.stride + rect.x * self.fmt.bits_per_pixel // 8
        return fourcc.to_rgb(self.fmt, self.data[start:], rect.width, rect.height, self.stride)

    @property
    def own_colourspace(self) -> str | None:
        """The guest's bytes as a colourspace JPEG encoders read as they are, None when
        they need converting first (XRGB/ARGB8888 are B, G, R, X/A in memory: alpha is
        dropped, as `rgb` does; RGB888 is B, G, R)."""
        return _JPEG_COLOURSPACES.get(self.fmt.fourcc)

    def jpeg_source(self, rect: Rect) -> tuple[npt.NDArray[np.uint8], str]:
        """`rect` as pixels simplejpeg reads, and their colourspace: a view of the guest's
        own bytes where `own_colourspace` has one, else converted to RGB."""
        colourspace = self.own_colourspace
        if colourspace is None:
            return self.rgb(rect), "RGB"
        size = self.fmt.bytes_per_pixel
        rows = self.data[: self.height * self.stride].reshape(self.height, self.stride)
        area = rows[rect.y : rect.y + rect.height, rect.x * size : (rect.x + rect.width) * size]
        return area.reshape(rect.height, rect.width, size), colourspace


_JPEG_COLOURSPACES: Final = {
    fourcc.XRGB8888.fourcc: "BGRX",
    fourcc.ARGB8888.fourcc: "BGRX",
    fourcc.RGB888.fourcc: "BGR",
}


@dataclass(frozen=True)
class Tile:
    """One encoded rectangle of the frame."""

    rect: Rect
    kind: Kind
    data: bytes


def mask_rects(mask: TileMask, width: int, height: int) -> list[Rect]:
    """Rectangles, in pixels of a `width`x`height` picture, covering the tiles set in `mask`
    exactly once."""
    return [_clip(rect, width, height) for rect in _merge(mask)]


def is_motion(mask: TileMask) -> bool:
    """Whether a change is large enough to go as one JPEG of its bounding box."""
    return bool(np.count_nonzero(mask) >= MOTION_SHARE * max(mask.size, 1))


def bounding_rect(mask: TileMask, width: int, height: int) -> Rect:
    """The smallest rectangle, in pixels, holding every tile set in `mask` (not empty)."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    tile_rect = Rect(
        int(columns[0]),
        int(rows[0]),
        int(columns[-1] - columns[0]) + 1,
        int(rows[-1] - rows[0]) + 1,
    )
    return _clip(tile_rect, width, height)


def rect_tiles(rect: Rect, shape: tuple[int, ...]) -> TileMask:
    """A mask of `shape` with the tiles `rect` (tile-aligned, in pixels) covers set."""
    mask = np.zeros(shape, dtype=bool)
    mask[
        rect.y // TILE : -(-(rect.y + rect.height) // TILE),
        rect.x // TILE : -(-(rect.x + rect.width) // TILE),
    ] = True
    return mask


def _merge(mask: npt.NDArray[np.bool_]) -> Iterable[Rect]:
    """Tile-unit rectangles: row runs, stacked while the same run repeats below."""
    band_tiles = BAND_ROWS // TILE
    open_runs: dict[tuple[int, int], int] = {}  # run -> first tile row
    marked: list[bool] = np.any(mask, axis=1).tolist()
    for row_index, row in enumerate(mask):
        row_runs = set(runs(row)) if marked[row_index] else set()
        for run, first in list(open_runs.items()):
            if run not in row_runs or row_index - first >= band_tiles:
                del open_runs[run]
                yield Rect(run[0], first, run[1] - run[0], row_index - first)
        for run in row_runs:
            open_runs.setdefault(run, row_index)
    for run, first in open_runs.items():
        yield Rect(run[0], first, run[1] - run[0], len(mask) - first)


def _clip(tiles: Rect, width: int, height: int) -> Rect:
    x, y = tiles.x * TILE, tiles.y * TILE
    return Rect(x, y, min(tiles.width * TILE, width - x), min(tiles.height * TILE, height - y))


def encode_png(pixels: Rgb) -> bytes:
    """A lossless PNG of HxWx3 pixels: "Up" row filter and fast deflate, no colour chunks
    (so browsers draw the bytes as they are)."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), 1)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_jpeg(pixels: npt.NDArray[np.uint8], quality: int, colourspace: str = "RGB") -> bytes:
    """A 4:2:0 JPEG of HxWxN pixels in `colourspace` (simplejpeg's names: RGB, BGRX, ...)."""
    data: bytes = simplejpeg.encode_jpeg(pixels, quality, colourspace, "420", fastdct=True)
    return data


def encode_motion(picture: Picture, rect: Rect, quality: int) -> Tile:
    """`rect` of `picture` as one JPEG, without trying PNG: for full-screen motion, where
    encoding and decoding time matter more than bytes."""
    pixels, colourspace = picture.jpeg_source(rect)
    return Tile(rect, "jpeg", encode_jpeg(pixels, quality, colourspace))


def encode_rect(picture: Picture, rect: Rect, quality: Quality) -> Tile:
    """`rect` of `picture` as the smaller of JPEG and PNG (PNG only when `quality` is
    lossless)."""
    if quality == LOSSLESS:
        return Tile(rect, "png", encode_png(picture.rgb(rect)))
    if rect.height <= 2 * SAMPLE_ROWS:
        pixels = picture.rgb(rect)
        jpeg, png = encode_jpeg(pixels, quality), encode_png(pixels)
        return Tile(rect, "png", png) if len(png) <= len(jpeg) else Tile(rect, "jpeg", jpeg)
    middle = (rect.height - SAMPLE_ROWS) // 2
    sample = Rect(rect.x, rect.y + middle, rect.width, SAMPLE_ROWS)
    if len(encode_png(picture.rgb(sample))) <= len(encode_motion(picture, sample, quality).data):
        return Tile(rect, "png", encode_png(picture.rgb(rect)))
    return encode_motion(picture, rect, quality)


def pack_frame(header: dict[str, object], tiles: Sequence[Tile]) -> bytes:
    """One WebSocket message: u32 length, JSON header (with a `tiles` list of
    [x, y, width, height, kind, bytes]), then the tiles' bytes in order."""
    described = {
        **header,
        "tiles": [
            [t.rect.x, t.rect.y, t.rect.width, t.rect.height, t.kind, len(t.data)] for t in tiles
        ],
    }
    text = json.dumps(described, separators=(",", ":")).encode()
    return b"".join((HEADER_LENGTH.pack(len(text)), text, *(t.data for t in tiles)))
