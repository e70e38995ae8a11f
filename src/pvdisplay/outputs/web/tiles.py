"""What changed between two frames, and the smallest way to send each changed region.

Pure functions over captured pictures in the guest's own pixel format: the diff runs on
the raw bytes (8 bytes at a time where the stride allows), and only changed regions are
converted to RGB. A frame is cut into `TILE`-pixel tiles; changed tiles are merged into
rectangles (runs along a tile row, then identical runs down consecutive rows, at most
`BAND_ROWS` pixels high so a full-screen change becomes bands that can be encoded in
parallel). Each rectangle is sent as JPEG or as lossless PNG,
whichever a trial on the rectangle (or on a sample of its rows, for tall ones) says is
smaller.
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

from pvdisplay.wire import fourcc
from pvdisplay.wire.fourcc import PixelFormat

Rgb = npt.NDArray[np.uint8]
Kind = Literal["jpeg", "png"]

TILE: Final = 64
BAND_ROWS: Final = 128
# Tall rectangles are judged on this many of their middle rows, not encoded twice whole.
SAMPLE_ROWS: Final = 16
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
class Rect:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Picture:
    """`height` rows of `stride` bytes of `fmt` pixels, owned (nobody writes it again)."""

    fmt: PixelFormat
    width: int
    height: int
    stride: int
    data: npt.NDArray[np.uint8]  # 1-D, stride * height bytes

    @property
    def geometry(self) -> tuple[int, int, int, int]:
        return self.fmt.fourcc, self.width, self.height, self.stride

    def rgb(self, rect: Rect) -> Rgb:
        """`rect` converted to HxWx3 RGB."""
        start = rect.y * self.stride + rect.x * self.fmt.bits_per_pixel // 8
        return fourcc.to_rgb(self.fmt, self.data[start:], rect.width, rect.height, self.stride)


@dataclass(frozen=True)
class Tile:
    """One encoded rectangle of the frame."""

    rect: Rect
    kind: Kind
    data: bytes


def changed_rects(previous: Picture | None, current: Picture) -> list[Rect]:
    """Rectangles covering every pixel of `current` that differs from `previous`.

    No previous picture (or one of another format or geometry) means everything changed.
    """
    if previous is None or previous.geometry != current.geometry:
        mask = np.ones((-(-current.height // TILE), -(-current.width // TILE)), dtype=bool)
    else:
        mask = _changed_tiles(previous, current)
    return [_clip(rect, current.width, current.height) for rect in _merge(mask)]


def _changed_tiles(previous: Picture, current: Picture) -> npt.NDArray[np.bool_]:
    # Compare whole 64-bit words where rows are aligned to them; TILE pixels are always a
    # whole number of words (TILE * bits_per_pixel is a multiple of 64).
    word = 8 if current.stride % 8 == 0 else 1
    row_words = -(-current.fmt.min_pitch(current.width) // word)
    dtype = np.uint64 if word == 8 else np.uint8

    def rows(picture: Picture) -> npt.NDArray[np.generic]:
        return picture.data.view(dtype).reshape(picture.height, -1)[:, :row_words]

    differs = rows(previous) != rows(current)
    tile_words = TILE * current.fmt.bits_per_pixel // (8 * word)
    by_row = np.logical_or.reduceat(differs, np.arange(0, current.height, TILE), axis=0)
    result: npt.NDArray[np.bool_] = np.logical_or.reduceat(
        by_row, np.arange(0, row_words, tile_words), axis=1
    )
    return result


def _runs(row: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) column ranges of consecutive changed tiles."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
    return [(int(start), int(end)) for start, end in zip(edges[::2], edges[1::2], strict=True)]


def _merge(mask: npt.NDArray[np.bool_]) -> Iterable[Rect]:
    """Tile-unit rectangles: row runs, stacked while the same run repeats below."""
    band_tiles = BAND_ROWS // TILE
    open_runs: dict[tuple[int, int], int] = {}  # run -> first tile row
    for row_index, row in enumerate(mask):
        runs = set(_runs(row))
        for run, first in list(open_runs.items()):
            if run not in runs or row_index - first >= band_tiles:
                del open_runs[run]
                yield Rect(run[0], first, run[1] - run[0], row_index - first)
        for run in runs:
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


def encode_jpeg(pixels: Rgb, quality: int) -> bytes:
    data: bytes = simplejpeg.encode_jpeg(pixels, quality, "RGB", "420", fastdct=True)
    return data


def encode_rect(picture: Picture, rect: Rect, quality: Quality) -> Tile:
    """`rect` of `picture` as the smaller of JPEG and PNG (PNG only when `quality` is
    lossless)."""
    pixels = picture.rgb(rect)
    if quality == LOSSLESS:
        return Tile(rect, "png", encode_png(pixels))
    if rect.height <= 2 * SAMPLE_ROWS:
        jpeg, png = encode_jpeg(pixels, quality), encode_png(pixels)
        return Tile(rect, "png", png) if len(png) <= len(jpeg) else Tile(rect, "jpeg", jpeg)
    middle = (rect.height - SAMPLE_ROWS) // 2
    sample = pixels[middle : middle + SAMPLE_ROWS]
    if len(encode_png(sample)) <= len(encode_jpeg(sample, quality)):
        return Tile(rect, "png", encode_png(pixels))
    return Tile(rect, "jpeg", encode_jpeg(pixels, quality))


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
