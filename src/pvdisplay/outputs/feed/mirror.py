"""A connector's picture, kept current tile by tile from the guest's pages.

Every update compares the guest's picture with the mirror in place, one band of `TILE`
rows at a time (the band and the comparison stay in cache), and copies only the tiles
that differ, so a small change costs one read of the guest's picture and little else: no
full copy, no full-frame temporaries. Each update that changes something is a new
*generation*, and a per-tile clock records the generation that last wrote each tile, so
any number of readers learn what changed since the picture they were given
(`Snapshot.changed_after`) without comparing pixels again.

Outputs keep the picture in the form they encode from: `GuestMirror` in the guest's own
bytes (the web viewer's JPEG reads them as they are), `CanonicalMirror` as 0x00RRGGBB
words (what VNC converts to each client's pixel format). The two differ only in how a
band of the guest's rows is read.

The guest may draw while it is read, and readers may read the mirror while an update
writes it: a tile read half-old is what any VNC server sees, and the later write carries
a later clock, so the tile is sent again. One update at a time.
"""

import errno
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final, Generic, Self, TypeVar

import numpy as np
import numpy.typing as npt

from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.fourcc import PixelFormat

TILE: Final = 64
"""Tile side in pixels: the ZRLE tile, so VNC rectangles never split one."""

TileMask = npt.NDArray[np.bool_]
"""One flag per tile, rows by columns."""

Frame = npt.NDArray[np.uint32]
"""A canonical picture: HxW uint32, 0x00RRGGBB (a DRM XRGB8888 picture, X byte cleared)."""

_IN_PLACE: Final = (fourcc.XRGB8888, fourcc.ARGB8888)
"""Formats whose bytes are canonical pixels once the X/A byte is cleared."""


def runs(row: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive set tiles in `row`."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


class Mirror(ABC):
    """The picture of a `width`x`height` `fmt` plane at `stride` bytes a row.

    Subclasses hold the kept rows (`_kept`, `height` rows of `tile_units * columns` units
    or more) and say how the guest's rows read in the same units (`_source_rows`, `_band`).
    """

    def __init__(
        self, fmt: PixelFormat, width: int, height: int, stride: int, tile_units: int
    ) -> None:
        if width <= 0 or height <= 0 or stride < fmt.min_pitch(width):
            raise ProtocolError(errno.EINVAL, f"{width}x{height} at stride {stride}")
        self.fmt, self.width, self.height, self.stride = fmt, width, height, stride
        self.grid = (-(-height // TILE), -(-width // TILE))
        self.generation = 0
        self._clock = np.zeros(self.grid, dtype=np.int64)
        self._tile_units = tile_units

    @property
    def geometry(self) -> tuple[int, int, int, int]:
        return self.fmt.fourcc, self.width, self.height, self.stride

    def snapshot(self) -> "Snapshot[Self]":
        return Snapshot(self, self.generation)

    def changed_since(self, generation: int) -> TileMask:
        """The tiles written after `generation`."""
        return self._clock > generation

    def update(self, source: npt.NDArray[np.uint8]) -> TileMask:
        """Bring the mirror up to the picture at the start of `source` (bytes in its
        geometry, possibly the guest's own pages); returns the tiles that changed."""
        if source.size < self.stride * (self.height - 1) + self.fmt.min_pitch(self.width):
            raise ProtocolError(errno.EINVAL, "buffer too small for the picture")
        rows, kept_rows = self._source_rows(source), self._kept
        units = self._tile_units
        starts = np.arange(0, kept_rows.shape[1], units)
        mask = np.zeros(self.grid, dtype=np.bool_)
        for band, top in enumerate(range(0, self.height, TILE)):
            new, kept = self._band(rows, top), kept_rows[top : top + TILE]
            if self.generation == 0:  # nothing to compare with: take it all
                mask[band] = True
                kept[...] = new
                continue
            differs = np.not_equal(new, kept, out=self._differs[: len(new)])
            if not differs.any():
                continue
            changed = np.logical_or.reduceat(differs.any(axis=0), starts)
            mask[band] = changed
            if changed.all():
                kept[...] = new
                continue
            for first, end in runs(changed):
                columns = np.s_[:, first * units : end * units]
                kept[columns] = new[columns]
        # The first update always makes a generation: it took the whole picture.
        if self.generation == 0 or mask.any():
            self.generation += 1
            self._clock[mask] = self.generation
        return mask

    _kept: npt.NDArray[np.generic]
    _differs: npt.NDArray[np.bool_]

    @abstractmethod
    def _source_rows(self, source: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
        """The guest's rows, in the units `_kept` holds."""

    def _band(self, rows: npt.NDArray[np.generic], top: int) -> npt.NDArray[np.generic]:
        return rows[top : top + TILE]


class GuestMirror(Mirror):
    """The picture in the guest's own bytes: `data`, `height` rows of `stride` bytes."""

    def __init__(self, fmt: PixelFormat, width: int, height: int, stride: int) -> None:
        # Whole 64-bit words where rows are aligned to them; TILE pixels are always a whole
        # number of words (TILE * bits_per_pixel is a multiple of 64).
        self._word = 8 if stride % 8 == 0 else 1
        super().__init__(fmt, width, height, stride, TILE * fmt.bits_per_pixel // (8 * self._word))
        self._row_words = -(-fmt.min_pitch(width) // self._word)
        self.data = np.zeros(stride * height, np.uint8)
        self._kept = self._words(self.data)
        self._differs = np.empty((TILE, self._row_words), dtype=np.bool_)

    def _source_rows(self, source: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
        return self._words(source)

    def _words(self, data: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
        dtype = np.uint64 if self._word == 8 else np.uint8
        height, stride = self.height, self.stride
        words = data[: height * stride].view(dtype).reshape(height, stride // self._word)
        return words[:, : self._row_words]


class CanonicalMirror(Mirror):
    """The picture as a canonical `frame` (0x00RRGGBB words)."""

    def __init__(self, fmt: PixelFormat, width: int, height: int, stride: int) -> None:
        super().__init__(fmt, width, height, stride, TILE)
        self.frame: Frame = np.zeros((height, width), dtype=np.uint32)
        self._kept = self.frame
        self._scratch = np.empty((TILE, width), dtype=np.uint32)
        self._differs = np.empty((TILE, width), dtype=np.bool_)

    def _source_rows(self, source: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
        if self.fmt in _IN_PLACE:  # read in place, the X byte cleared band by band
            return np.lib.stride_tricks.as_strided(
                source,
                shape=(self.height, self.width * 4),
                strides=(self.stride, 1),
                writeable=False,
            ).view("<u4")
        return canonical_frame(self.fmt, source, self.width, self.height, self.stride)

    def _band(self, rows: npt.NDArray[np.generic], top: int) -> npt.NDArray[np.generic]:
        guest = rows[top : top + TILE]
        if self.fmt not in _IN_PLACE:
            return guest
        band = self._scratch[: len(guest)]
        np.bitwise_and(guest, np.uint32(0xFFFFFF), out=band)
        return band


def canonical_frame(
    fmt: PixelFormat, buffer: npt.NDArray[np.uint8], width: int, height: int, stride: int
) -> Frame:
    """A fresh canonical copy of a guest picture in any displif format."""
    if fmt in _IN_PLACE:
        if width <= 0 or height <= 0 or stride < width * 4:
            raise ProtocolError(errno.EINVAL, f"{width}x{height} at stride {stride}")
        if buffer.size < stride * (height - 1) + width * 4:
            raise ProtocolError(errno.EINVAL, "buffer too small for the picture")
        rows = np.lib.stride_tricks.as_strided(
            buffer, shape=(height, width * 4), strides=(stride, 1), writeable=False
        )
        # One pass: read the rows in place and clear the X byte into a fresh array.
        frame = np.empty((height, width), dtype=np.uint32)
        np.bitwise_and(rows.view("<u4"), np.uint32(0xFFFFFF), out=frame)
        return frame
    rgb = fourcc.to_rgb(fmt, buffer, width, height, stride).astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return np.asarray(packed, dtype=np.uint32)


M = TypeVar("M", bound=Mirror)


@dataclass(frozen=True)
class Snapshot(Generic[M]):
    """A mirror as of one generation: what a reader is given, and what it diffs against
    next."""

    mirror: M
    generation: int

    def changed_after(self, given: "Snapshot[M] | None") -> TileMask | None:
        """The tiles a reader holding `given` lacks; None when `given` is not an earlier
        generation of the same mirror (the reader has all of it to learn)."""
        if given is None or given.mirror is not self.mirror:
            return None
        return self.mirror.changed_since(given.generation)
