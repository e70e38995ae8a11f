"""ZRLE (RFC 6143 section 7.7.6): 64x64 tiles, each the smallest of its subencodings,
all through one zlib stream that lives as long as the connection.

Per tile the encoder measures the exact size of raw, solid, packed palette, plain RLE
and palette RLE from the tile's runs and colours (numpy), then writes only the
winner. Run-length bytes are built without a Python loop per run, so a busy tile costs
a handful of array operations.
"""

import struct
import zlib
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pvdisplay.outputs.vnc.pixels import Frame, RfbPixelFormat, client_pixels

TILE: Final = 64
# Level 1: a 1080p frame must compress in tens of milliseconds; higher levels buy little
# on guest pictures and cost several times the CPU.
ZLIB_LEVEL: Final = 1

RAW: Final = 0
SOLID: Final = 1
PLAIN_RLE: Final = 128
PALETTE_RLE_BASE: Final = 128
MAX_PACKED_PALETTE: Final = 16
MAX_RLE_PALETTE: Final = 127
_SAMPLE_STEP: Final = 7  # 586 of a full tile's 4096 pixels, spread over rows and columns

Bytes = npt.NDArray[np.uint8]


def _run_length_bytes(lengths: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """How many bytes ZRLE spends on each run length: (L-1) as 255s plus a final byte."""
    return (lengths - 1) // 255 + 1


def _packed_indices(indices: npt.NDArray[np.intp], width: int, bits: int) -> Bytes:
    """Palette indices, `bits` each, MSB first, every row padded to a whole byte."""
    per_byte = 8 // bits
    rows = indices.reshape(-1, width)
    padded_width = -(-width // per_byte) * per_byte
    padded = np.zeros((rows.shape[0], padded_width), dtype=np.uint8)
    padded[:, :width] = rows
    groups = padded.reshape(rows.shape[0], -1, per_byte)
    shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)
    packed: Bytes = np.bitwise_or.reduce(groups << shifts, axis=2).astype(np.uint8)
    return packed.ravel()


def _runs_with_lengths(
    heads: Bytes, head_width: int, lengths: npt.NDArray[np.intp], short_runs_bare: bool
) -> Bytes:
    """Each run as its head bytes followed by its length bytes.

    `heads` is (runs, head_width). With `short_runs_bare`, runs of one pixel carry no
    length bytes (palette RLE); otherwise every run does (plain RLE).
    """
    tails = _run_length_bytes(lengths)
    if short_runs_bare:
        tails = np.where(lengths == 1, 0, tails)
    sizes = head_width + tails
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    out = np.full(int(sizes.sum()), 255, dtype=np.uint8)
    for column in range(head_width):
        out[offsets + column] = heads[:, column]
    has_tail = tails > 0
    out[(offsets + sizes - 1)[has_tail]] = ((lengths - 1) % 255)[has_tail]
    return out


def encode_tile(values: npt.NDArray[np.unsignedinteger[Any]], compact: Bytes) -> bytes:
    """One tile. `values` are the tile's client pixel values (h x w), `compact` their
    CPIXEL bytes (h*w x cpixel size), both in the same order."""
    height, width = values.shape
    flat = values.ravel()
    count = flat.size
    cpixel = compact.shape[1]
    boundaries = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if boundaries.size == 0:
        return bytes([SOLID]) + bytes(compact[0])
    starts = np.concatenate(([0], boundaries))
    lengths = np.diff(np.append(starts, count))
    length_bytes = int(_run_length_bytes(lengths).sum())
    sizes = {RAW: count * cpixel, PLAIN_RLE: starts.size * cpixel + length_bytes}
    # Sorting out the palette is most of a tile's cost; a sample with more colours than
    # any palette holds proves the tile needs none.
    if np.unique(flat[::_SAMPLE_STEP]).size > MAX_RLE_PALETTE:
        return _plain(sizes, compact, starts, lengths)
    palette, first_seen, indices = np.unique(flat, return_index=True, return_inverse=True)
    colours = palette.size
    if colours <= MAX_PACKED_PALETTE:
        bits = 1 if colours <= 2 else 2 if colours <= 4 else 4
        row_bytes = -(-width * bits // 8)
        sizes[colours] = colours * cpixel + height * row_bytes
    if colours <= MAX_RLE_PALETTE:
        long_runs = lengths > 1
        sizes[PALETTE_RLE_BASE + colours] = (
            colours * cpixel + starts.size + int(_run_length_bytes(lengths[long_runs]).sum())
        )
    kind = min(sizes, key=lambda key: sizes[key])
    if kind in (RAW, PLAIN_RLE):
        return _plain(sizes, compact, starts, lengths)
    palette_bytes = compact[first_seen].tobytes()
    if kind <= MAX_PACKED_PALETTE:
        packed = _packed_indices(indices, width, bits)
        return bytes([colours]) + palette_bytes + packed.tobytes()
    run_indices = indices.ravel()[starts].astype(np.uint8)
    heads = (run_indices | np.where(lengths > 1, 0x80, 0).astype(np.uint8))[:, None]
    body = _runs_with_lengths(heads, 1, lengths, short_runs_bare=True)
    return bytes([PALETTE_RLE_BASE + colours]) + palette_bytes + body.tobytes()


def _plain(
    sizes: dict[int, int],
    compact: Bytes,
    starts: npt.NDArray[np.intp],
    lengths: npt.NDArray[np.intp],
) -> bytes:
    """The smaller of raw and plain RLE (the encodings without a palette)."""
    if sizes[RAW] <= sizes[PLAIN_RLE]:
        return bytes([RAW]) + compact.tobytes()
    body = _runs_with_lengths(compact[starts], compact.shape[1], lengths, short_runs_bare=False)
    return bytes([PLAIN_RLE]) + body.tobytes()


class ZrleEncoder:
    """ZRLE for one connection: the zlib stream carries over from rectangle to rectangle."""

    def __init__(self) -> None:
        self._stream = zlib.compressobj(ZLIB_LEVEL)

    def encode(self, region: Frame, fmt: RfbPixelFormat) -> bytes:
        """The rectangle body for a canonical `region`: u32 length, then zlib data."""
        values = client_pixels(region, fmt)
        compact_view = np.ascontiguousarray(values).view(np.uint8)
        compact_view = compact_view.reshape(*values.shape, fmt.bytes_per_pixel)
        compact_view = compact_view[..., fmt.compact_slice]
        height, width = values.shape
        chunks = []
        for top in range(0, height, TILE):
            for left in range(0, width, TILE):
                tile = values[top : top + TILE, left : left + TILE]
                compact = compact_view[top : top + TILE, left : left + TILE]
                chunks.append(encode_tile(tile, compact.reshape(-1, compact.shape[-1])))
        data = self._stream.compress(b"".join(chunks)) + self._stream.flush(zlib.Z_SYNC_FLUSH)
        return struct.pack(">I", len(data)) + data
