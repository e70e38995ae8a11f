"""What changed between the frame a client has and the frame it should get.

Frames are compared in 64x64 tiles (the ZRLE tile, so rectangles never split a
tile). Changed tiles become rectangles: runs along a tile row, merged with the run
right above when they span the same columns. Tiles whose new content is the old frame
moved by one global offset (scrolling, a dragged window) can be sent as CopyRect; the
offset is guessed from a few rows and columns and then verified tile by tile, so a
wrong guess costs only the check.
"""

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from pvdisplay.outputs.vnc.pixels import Frame

TILE: Final = 64
MAX_MOTION: Final = 64
_PROBES: Final = 3

Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int

    def clip(self, width: int, height: int) -> "Rect":
        x, y = min(max(self.x, 0), width), min(max(self.y, 0), height)
        return Rect(x, y, min(self.width, width - x), min(self.height, height - y))

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0


def _tiled(mask: Mask) -> Mask:
    """Any-reduce a per-pixel mask to a per-tile mask (edge tiles may be partial)."""
    height, width = mask.shape
    rows, columns = -(-height // TILE), -(-width // TILE)
    padded = np.zeros((rows * TILE, columns * TILE), dtype=np.bool_)
    padded[:height, :width] = mask
    return np.asarray(padded.reshape(rows, TILE, columns, TILE).any(axis=(1, 3)))


def changed_tiles(old: Frame, new: Frame) -> Mask:
    """Tiles where two frames of the same size differ."""
    return _tiled(old != new)


def region_tiles(area: Rect, width: int, height: int) -> Mask:
    """Tiles that intersect `area`."""
    mask = np.zeros((height, width), dtype=np.bool_)
    mask[area.y : area.y + area.height, area.x : area.x + area.width] = True
    return _tiled(mask)


def tile_rects(tiles: Mask, width: int, height: int) -> list[Rect]:
    """Rectangles covering exactly the marked tiles, clipped to the frame."""
    rects: list[Rect] = []
    open_runs: dict[tuple[int, int], int] = {}  # (first column, end column) -> rect index
    for row in range(tiles.shape[0]):
        marked = np.concatenate(([False], tiles[row], [False]))
        edges = np.flatnonzero(marked[1:] != marked[:-1])
        runs = list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))
        next_open: dict[tuple[int, int], int] = {}
        for first, end in runs:
            above = open_runs.get((first, end))
            if above is not None:
                grown = rects[above]
                rects[above] = Rect(grown.x, grown.y, grown.width, grown.height + TILE)
                next_open[(first, end)] = above
            else:
                next_open[(first, end)] = len(rects)
                rects.append(Rect(first * TILE, row * TILE, (end - first) * TILE, TILE))
        open_runs = next_open
    return [rect.clip(width, height) for rect in rects]


def _best_shift(old: npt.NDArray[np.uint32], new: npt.NDArray[np.uint32]) -> tuple[int, float]:
    """The shift s (|s| <= MAX_MOTION) with new[i] == old[i - s] most often along 1-D
    lines, and the fraction of compared pixels that matched."""
    size = new.shape[-1]
    best, best_score = 0, -1.0
    for shift in range(-MAX_MOTION, MAX_MOTION + 1):
        if abs(shift) >= size:
            continue
        if shift >= 0:
            same = new[..., shift:] == old[..., : size - shift]
        else:
            same = new[..., :shift] == old[..., -shift:]
        score = float(np.count_nonzero(same)) / same.size
        if score > best_score:
            best, best_score = shift, score
    return best, best_score


def estimate_motion(old: Frame, new: Frame) -> tuple[int, int] | None:
    """A candidate (dx, dy) offset for CopyRect from a few probe rows and columns, or
    None when standing still matches the probes best."""
    height, width = new.shape
    rows = np.linspace(0, height - 1, _PROBES + 2, dtype=np.intp)[1:-1]
    columns = np.linspace(0, width - 1, _PROBES + 2, dtype=np.intp)[1:-1]
    dx, x_score = _best_shift(old[rows], new[rows])
    dy, y_score = _best_shift(old[:, columns].T, new[:, columns].T)
    if x_score >= y_score:
        return None if dx == 0 else (dx, 0)
    return None if dy == 0 else (0, dy)


def copyable_tiles(old: Frame, new: Frame, tiles: Mask, dx: int, dy: int) -> Mask:
    """Marked tiles whose new pixels all equal the old frame at (x - dx, y - dy)."""
    height, width = new.shape
    same = np.zeros((height, width), dtype=np.bool_)
    top, bottom = max(dy, 0), height + min(dy, 0)
    left, right = max(dx, 0), width + min(dx, 0)
    same[top:bottom, left:right] = (
        new[top:bottom, left:right] == old[top - dy : bottom - dy, left - dx : right - dx]
    )
    # A tile qualifies only if every pixel matched: reduce "any mismatch" per tile.
    return tiles & ~_tiled(~same)


def copy_order(rects: list[Rect], dx: int, dy: int) -> list[Rect]:
    """CopyRects ordered so none reads pixels an earlier one in the update overwrote.

    Every source lies upstream of its destination by (dx, dy); doing the rectangles
    furthest downstream first leaves each source intact until it has been read.
    """
    x_sign, y_sign = (dx > 0) - (dx < 0), (dy > 0) - (dy < 0)
    return sorted(rects, key=lambda rect: (-rect.y * y_sign, -rect.x * x_sign))
