"""ZRLE (RFC 6143 section 7.7.6): 64x64 tiles, each the smallest of its subencodings,
all through one zlib stream that lives as long as the connection.

A rectangle's tiles are encoded together, never one by one: the pixels are gathered
once into ZRLE tile order (one flat array, each tile's pixels row by row), and every
measurement is an array operation over all tiles at once. Runs come from one
comparison of neighbours; palettes only where a sample of the tile's colours says a
palette can exist and the run counts say it can win, so a tile of photo or animation
costs a few passes over memory and goes out raw. The only Python loop is over tiles to
join their finished bytes (slices, no numpy per tile).
"""

import functools
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pvdisplay.outputs.feed.mirror import Frame
from pvdisplay.outputs.vnc.pixels import RfbPixelFormat, client_pixels

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
_LAYOUTS_CACHED: Final = 8

Bytes = npt.NDArray[np.uint8]
Indices = npt.NDArray[np.intp]
Values = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class _Layout:
    """Where a rectangle's pixels go in ZRLE tile order, for one size and row stride."""

    order: Indices  # tile-order position -> element offset from the rectangle's origin
    starts: Indices  # per tile: its first position
    sizes: Indices  # per tile: its pixel count
    widths: Indices
    heights: Indices
    tile_of: npt.NDArray[np.uint64]  # per position: its tile, for keyed sorts
    first: npt.NDArray[np.bool_]  # per position: does a tile start here
    samples: Indices  # every _SAMPLE_STEP-th position of each tile


@functools.lru_cache(maxsize=_LAYOUTS_CACHED)
def _layout(height: int, width: int, stride: int) -> _Layout:
    rows, columns = np.arange(height), np.arange(width)
    widths_x = np.minimum(width - np.arange(0, width, TILE), TILE)
    heights_y = np.minimum(height - np.arange(0, height, TILE), TILE)
    widths = np.tile(widths_x, heights_y.size)
    heights = np.repeat(heights_y, widths_x.size)
    sizes = widths * heights
    starts = np.cumsum(sizes) - sizes
    tile = (rows // TILE)[:, None] * widths_x.size + (columns // TILE)[None, :]
    inside = (rows % TILE)[:, None] * widths[tile] + (columns % TILE)[None, :]
    position = starts[tile] + inside
    order = np.empty(height * width, dtype=np.intp)
    order[position.ravel()] = (rows[:, None] * stride + columns[None, :]).ravel()
    tile_of = np.repeat(np.arange(sizes.size, dtype=np.uint64), sizes)
    first = np.zeros(height * width, dtype=np.bool_)
    first[starts] = True
    in_tile = np.arange(height * width) - np.repeat(starts, sizes)
    samples = np.flatnonzero(in_tile % _SAMPLE_STEP == 0)
    return _Layout(order, starts, sizes, widths, heights, tile_of, first, samples)


def _tile_order(region: Frame) -> tuple[Values, _Layout]:
    """The region's pixels in ZRLE tile order (one gather), and the layout used."""
    if region.strides[1] != region.itemsize:
        region = np.ascontiguousarray(region)
    height, width = region.shape
    stride = region.strides[0] // region.itemsize
    layout = _layout(height, width, stride)
    span = (height - 1) * stride + width
    flat = np.lib.stride_tricks.as_strided(
        region, shape=(span,), strides=(region.itemsize,), writeable=False
    )
    return np.take(flat, layout.order), layout


def _cpixels(values: Values, fmt: RfbPixelFormat) -> Bytes:
    """CPIXEL bytes (n x cpixel size) of client pixel values held as uint32."""
    compact = fmt.compact_slice
    if compact.stop - compact.start == fmt.bytes_per_pixel:
        return values.astype(fmt.dtype).view(np.uint8).reshape(values.size, fmt.bytes_per_pixel)
    # Three bytes of four: shifted into the low three bytes of a little-endian word,
    # then four words packed into three with shifts (a byte-strided copy is 3x slower).
    # Little-endian keeps bytes start..start+2 of the value's memory; big-endian the
    # same memory bytes, which are the value's bytes counted from the other end.
    shifted = (compact.start == 1) != fmt.big_endian
    eight, sixteen = np.uint32(8), np.uint32(16)
    low: Values = values >> eight if shifted else values
    if fmt.big_endian:  # those bytes go out most significant first
        byte = np.uint32(0xFF)
        low = ((low & byte) << sixteen) | (low & (byte << eight)) | ((low >> sixteen) & byte)
    count = values.size
    padded = np.zeros(-(-count // 4) * 4, dtype=np.uint32)
    padded[:count] = low
    quads = padded.reshape(-1, 4)
    words = np.empty((quads.shape[0], 3), dtype=np.uint32)
    np.bitwise_or(quads[:, 0], quads[:, 1] << 24, out=words[:, 0])
    np.bitwise_or(quads[:, 1] >> 8, quads[:, 2] << 16, out=words[:, 1])
    np.bitwise_or(quads[:, 2] >> 16, quads[:, 3] << 8, out=words[:, 2])
    return words.astype("<u4", copy=False).view(np.uint8).reshape(-1)[: count * 3].reshape(count, 3)


def _run_length_bytes(lengths: Indices) -> Indices:
    """How many bytes ZRLE spends on each run length: (L-1) as 255s plus a final byte."""
    return (lengths - 1) // 255 + 1


def _runs_with_lengths(heads: Bytes, lengths: Indices, short_runs_bare: bool) -> Bytes:
    """Each run as its head bytes (runs x head width) followed by its length bytes.

    With `short_runs_bare`, runs of one pixel carry no length bytes (palette RLE);
    otherwise every run does (plain RLE).
    """
    head_width = heads.shape[1]
    tails = _run_length_bytes(lengths)
    if short_runs_bare:
        tails = np.where(lengths == 1, 0, tails)
    sizes = head_width + tails
    offsets = np.cumsum(sizes) - sizes
    out = np.full(int(sizes.sum()), 255, dtype=np.uint8)
    for column in range(head_width):
        out[offsets + column] = heads[:, column]
    has_tail = tails > 0
    out[(offsets + sizes - 1)[has_tail]] = ((lengths - 1) % 255)[has_tail]
    return out


def _segment_starts(counts: Indices) -> Indices:
    return (np.cumsum(counts) - counts).astype(np.intp)


def _sums(values: Indices, counts: Indices) -> Indices:
    """Sums of consecutive groups of `values`, group g being `counts[g]` (>= 1) long."""
    if counts.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.add.reduceat(values, _segment_starts(counts)).astype(np.intp)


@dataclass(frozen=True)
class _Runs:
    """The runs of the tiles where runs were measured, in order."""

    starts: Indices  # tile-order position of each run's first pixel
    tile: Indices
    lengths: Indices


@dataclass(frozen=True)
class _Palettes:
    """Colours of the tiles where a palette was measured (other tiles: none)."""

    keys: npt.NDArray[np.uint64]  # distinct (tile << 32 | value), sorted
    colours: Indices  # per tile
    bits: Indices  # per tile: bits of a packed palette index
    row_bytes: Indices  # per tile: bytes of a packed row


def _colour_counts(keys: npt.NDArray[np.uint64], tiles: int) -> tuple[Any, Any]:
    """Distinct (tile << 32 | value) keys, sorted, and how many each tile has."""
    ordered = np.sort(keys)
    distinct = np.ones(ordered.size, dtype=np.bool_)
    np.not_equal(ordered[1:], ordered[:-1], out=distinct[1:])
    unique = ordered[distinct]
    return unique, np.bincount((unique >> np.uint64(32)).astype(np.intp), minlength=tiles)


def encode_tiles(values: Values, layout: _Layout, fmt: RfbPixelFormat) -> bytes:
    """The uncompressed ZRLE data of a rectangle: `values` are its client pixel values
    (as uint32) in tile order."""
    cpixel = fmt.compact_slice.stop - fmt.compact_slice.start
    starts, sizes, tiles = layout.starts, layout.sizes, layout.sizes.size
    boundary = layout.first.copy()
    boundary[1:] |= values[1:] != values[:-1]
    runs = np.add.reduceat(boundary.view(np.uint8), starts, dtype=np.uint16).astype(np.intp)
    raw_size = sizes * cpixel
    solid = runs == 1

    # A sample with more colours than any palette holds proves the tile needs none.
    sample_keys = (layout.tile_of[layout.samples] << np.uint64(32)) | values[layout.samples]
    sampled_colours = _colour_counts(sample_keys, tiles)[1]
    row_bytes_1bit = layout.heights * -(-layout.widths // 8)
    fewest = np.maximum(sampled_colours, 2)
    palette_floor = fewest * cpixel + np.where(fewest <= MAX_PACKED_PALETTE, row_bytes_1bit, runs)
    may_palette = ~solid & (sampled_colours <= MAX_RLE_PALETTE) & (palette_floor < raw_size)
    may_plain_rle = ~solid & (runs * (cpixel + 1) < raw_size)
    detailed = may_palette | may_plain_rle

    # Run lengths, only in tiles where runs can pay off.
    detailed_tiles = np.flatnonzero(detailed)
    run_starts = np.flatnonzero(boundary & np.repeat(detailed, sizes))
    run_tile = np.repeat(detailed_tiles, runs[detailed_tiles])
    run_ends = np.minimum(np.append(run_starts[1:], values.size), (starts + sizes)[run_tile])
    lengths = run_ends - run_starts
    measured = _Runs(run_starts, run_tile, lengths)
    length_bytes = _run_length_bytes(lengths)
    detailed_runs = runs[detailed_tiles]
    rle_bytes = np.zeros(tiles, dtype=np.intp)
    rle_bytes[detailed_tiles] = _sums(length_bytes, detailed_runs)
    long_bytes = np.zeros(tiles, dtype=np.intp)
    long_bytes[detailed_tiles] = _sums(np.where(lengths > 1, length_bytes, 0), detailed_runs)

    # Exact palettes where one may win.
    positions = np.flatnonzero(np.repeat(may_palette, sizes))
    palette_keys = (layout.tile_of[positions] << np.uint64(32)) | values[positions]
    palette_keys, colours = _colour_counts(palette_keys, tiles)
    bits = np.where(colours <= 2, 1, np.where(colours <= 4, 2, 4))
    row_bytes = -(-layout.widths * bits // 8)
    palettes = _Palettes(palette_keys, colours, bits, row_bytes)

    size = np.full((5, tiles), np.iinfo(np.intp).max, dtype=np.intp)
    size[0] = raw_size
    size[1] = np.where(solid, cpixel, size[1])
    size[2] = np.where(may_plain_rle, runs * cpixel + rle_bytes, size[2])
    packable = may_palette & (colours <= MAX_PACKED_PALETTE)
    size[3] = np.where(packable, colours * cpixel + layout.heights * row_bytes, size[3])
    fits = may_palette & (colours <= MAX_RLE_PALETTE)
    size[4] = np.where(fits, colours * cpixel + runs + long_bytes, size[4])
    choice = np.argmin(size, axis=0)
    chosen_size = size[choice, np.arange(tiles)]
    with_palette = choice >= 3
    palette_size = np.where(with_palette, colours * cpixel, 0)
    header = np.choose(choice, [RAW, SOLID, PLAIN_RLE, colours, PALETTE_RLE_BASE + colours])
    streams = _payloads(values, layout, fmt, choice=choice, runs=measured, palettes=palettes)
    palette_stream = _palette_entries(palette_keys, with_palette, fmt)
    # Where each tile's payload sits in its stream; raw tiles read the whole rectangle's
    # CPIXELs, so theirs is where the tile starts.
    body_size = chosen_size - palette_size
    body_at = np.empty(tiles, dtype=np.intp)
    for kind in range(len(streams)):
        chosen = choice == kind
        body_at[chosen] = _segment_starts(body_size[chosen])
    body_at[choice == 0] = starts[choice == 0] * cpixel
    palette_at = _segment_starts(palette_size)
    # The tiles' bytes in order: slices of the streams, no numpy per tile.
    pieces: list[bytes | memoryview] = []
    for kind, first_byte, palette, palette_length, body, length in zip(
        choice.tolist(),
        header.tolist(),
        palette_at.tolist(),
        palette_size.tolist(),
        body_at.tolist(),
        body_size.tolist(),
        strict=True,
    ):
        pieces.append(_HEADERS[first_byte])
        if palette_length:
            pieces.append(palette_stream[palette : palette + palette_length])
        pieces.append(streams[kind][body : body + length])
    return b"".join(pieces)


_HEADERS: Final = [bytes([value]) for value in range(256)]


def _palette_entries(
    keys: npt.NDArray[np.uint64], with_palette: npt.NDArray[np.bool_], fmt: RfbPixelFormat
) -> memoryview:
    """The CPIXELs of every palette tile's palette (its colours in sorted order)."""
    owner = (keys >> np.uint64(32)).astype(np.intp)
    entries = keys[with_palette[owner]] & np.uint64(0xFFFFFFFF)
    return memoryview(_cpixels(entries.astype(np.uint32), fmt).tobytes())


def _payloads(
    values: Values,
    layout: _Layout,
    fmt: RfbPixelFormat,
    *,
    choice: Indices,
    runs: _Runs,
    palettes: _Palettes,
) -> list[memoryview]:
    """Per subencoding (raw, solid, plain RLE, packed palette, palette RLE), the
    payloads after the palette of all tiles that use it, in tile order."""
    starts, sizes = layout.starts, layout.sizes
    palette_first = _segment_starts(palettes.colours)

    def palette_index(positions: Indices) -> Indices:
        keys = (layout.tile_of[positions] << np.uint64(32)) | values[positions]
        tile = layout.tile_of[positions].astype(np.intp)
        return np.searchsorted(palettes.keys, keys) - palette_first[tile]

    raw = _cpixels(values, fmt) if (choice == 0).any() else np.zeros(0, np.uint8)
    solid = _cpixels(values[starts[choice == 1]], fmt)
    plain_runs = (choice == 2)[runs.tile]
    heads = _cpixels(values[runs.starts[plain_runs]], fmt)
    plain = _runs_with_lengths(heads, runs.lengths[plain_runs], short_runs_bare=False)

    packed_tiles = choice == 3
    positions = np.flatnonzero(np.repeat(packed_tiles, sizes))
    indices = palette_index(positions)
    packed = _packed(positions, indices, layout, palettes=palettes, packed_tiles=packed_tiles)

    rle_runs = (choice == 4)[runs.tile]
    rle_lengths = runs.lengths[rle_runs]
    indices = palette_index(runs.starts[rle_runs])
    rle_heads = (indices | np.where(rle_lengths > 1, 0x80, 0)).astype(np.uint8)[:, None]
    palette_rle = _runs_with_lengths(rle_heads, rle_lengths, short_runs_bare=True)
    return [memoryview(part.tobytes()) for part in (raw, solid, plain, packed, palette_rle)]


def _packed(
    positions: Indices,
    indices: Indices,
    layout: _Layout,
    *,
    palettes: _Palettes,
    packed_tiles: npt.NDArray[np.bool_],
) -> Bytes:
    """Palette indices of the packed tiles, `bits` each, MSB first, every row of a tile
    padded to a whole byte; all tiles' bytes one after the other."""
    row_bytes = palettes.row_bytes
    tile_bytes = np.where(packed_tiles, layout.heights * row_bytes, 0)
    tile_offsets = _segment_starts(tile_bytes)
    tile = layout.tile_of[positions].astype(np.intp)
    inside = positions - layout.starts[tile]
    width = layout.widths[tile]
    tile_bits = palettes.bits[tile]
    per_byte = 8 // tile_bits
    row, column = inside // width, inside % width
    at = tile_offsets[tile] + row * row_bytes[tile] + column // per_byte
    shift = 8 - tile_bits * (column % per_byte + 1)
    total = int(tile_bytes.sum())
    weights = (indices << shift).astype(np.float64)
    return np.bincount(at, weights=weights, minlength=total).astype(np.uint8)


class ZrleEncoder:
    """ZRLE for one connection: the zlib stream carries over from rectangle to rectangle."""

    def __init__(self) -> None:
        self._stream = zlib.compressobj(ZLIB_LEVEL)

    def encode(self, region: Frame, fmt: RfbPixelFormat) -> bytes:
        """The rectangle body for a canonical `region`: u32 length, then zlib data."""
        canonical, layout = _tile_order(region)
        values = client_pixels(canonical, fmt).astype(np.uint32)
        tiles = encode_tiles(values, layout, fmt)
        data = self._stream.compress(tiles) + self._stream.flush(zlib.Z_SYNC_FLUSH)
        return struct.pack(">I", len(data)) + data
