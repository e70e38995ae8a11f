"""A connector's canonical frame, kept current tile by tile from the guest's pages.

Every update compares the guest's picture with the frame in place, one band of `TILE`
rows at a time (the band's canonical pixels and the comparison stay in cache), and
writes only the tiles that differ, so a small change costs one read of the guest's
picture and little else. Each update that changes something is a new generation; a
per-tile clock records which generation last wrote each tile, so every client learns
what changed since the frame it was last given (`changed_since`) without comparing
pixels itself.

The guest may draw while it is read, and clients may read the frame while an update
writes it: a tile read half-old is what any VNC server sees, and the later write carries
a later clock, so the tile is sent again.
"""

import errno
from typing import Final

import numpy as np

from pvdisplay.outputs.tile_clock import TileClock, runs
from pvdisplay.outputs.vnc.damage import TILE, Mask
from pvdisplay.outputs.vnc.pixels import Frame, canonical_frame
from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError

_IN_PLACE: Final = (fourcc.XRGB8888, fourcc.ARGB8888)
"""Formats whose bytes are canonical pixels once the X/A byte is cleared."""


class FrameMirror(TileClock):
    """The canonical frame of a `width`x`height` `fmt` picture at `stride` bytes a row."""

    def __init__(self, fmt: fourcc.PixelFormat, width: int, height: int, stride: int) -> None:
        if width <= 0 or height <= 0 or stride < fmt.min_pitch(width):
            raise ProtocolError(errno.EINVAL, f"{width}x{height} at stride {stride}")
        super().__init__((-(-height // TILE), -(-width // TILE)))
        self.geometry = (fmt.fourcc, width, height, stride)
        self.frame: Frame = np.zeros((height, width), dtype=np.uint32)
        self._fmt = fmt
        self._band = np.empty((TILE, width), dtype=np.uint32)
        self._differs = np.empty((TILE, width), dtype=np.bool_)
        self._tile_starts = np.arange(0, width, TILE)

    def update(self, buffer: np.ndarray) -> Mask:
        """Bring the frame up to the picture at the start of `buffer` (bytes, possibly the
        guest's own pages); returns the tiles that changed."""
        _, width, height, stride = self.geometry
        if buffer.size < stride * (height - 1) + self._fmt.min_pitch(width):
            raise ProtocolError(errno.EINVAL, "buffer too small for the picture")
        if self._fmt in _IN_PLACE:
            rows = np.lib.stride_tricks.as_strided(
                buffer, shape=(height, width * 4), strides=(stride, 1), writeable=False
            ).view("<u4")
        else:  # converted whole, then compared band by band like the others
            rows = canonical_frame(self._fmt, buffer, width, height, stride)
        mask = np.zeros(self._clock.shape, dtype=np.bool_)
        for band, top in enumerate(range(0, height, TILE)):
            guest, kept = rows[top : top + TILE], self.frame[top : top + TILE]
            new = self._band[: len(guest)]
            if self._fmt in _IN_PLACE:
                np.bitwise_and(guest, np.uint32(0xFFFFFF), out=new)
            else:
                new[:] = guest
            if self.generation == 0:  # nothing to compare with: take it all
                mask[band] = True
                kept[:] = new
                continue
            differs = np.not_equal(new, kept, out=self._differs[: len(new)])
            if not differs.any():
                continue
            changed = np.logical_or.reduceat(differs.any(axis=0), self._tile_starts)
            mask[band] = changed
            for first, end in runs(changed):
                columns = np.s_[:, first * TILE : end * TILE]
                kept[columns] = new[columns]
        self._tick(mask)
        return mask
