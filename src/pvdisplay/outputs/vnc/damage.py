"""What changed between the frame a client has and the frame it should get.

Frames are compared in 64x64 tiles (the ZRLE tile, so rectangles never split a
tile). Changed tiles become rectangles: runs along a tile row, merged with the run
right above when they span the same columns. Tiles whose new content is the old frame
moved by one global offset (scrolling, a dragged window) can be sent as CopyRect; the
offset is guessed from a few rows and columns and then verified tile by tile, so a
wrong guess costs only the check.
"""

from typing import Final

import numpy as np
import numpy.typing as npt

from pvdisplay.outputs.feed.mirror import TILE, Frame, TileMask
from pvdisplay.outputs.feed.rect import Rect

MAX_MOTION: Final = 64
_PROBES: Final = 3


def _tiled(mask: TileMask) -> TileMask:
    """Any-reduce a per-pixel mask to a per-tile mask (edge tiles may be partial)."""
    height, width = mask.shape
    rows, columns = -(-height // TILE), -(-width // TILE)
    padded = np.zeros((rows * TILE, columns * TILE), dtype=np.bool_)
    padded[:height, :width] = mask
    return np.asarray(padded.reshape(rows, TILE, columns, TILE).any(axis=(1, 3)))


def changed_tiles(old: Frame, new: Frame) -> TileMask:
    """Tiles where two frames of the same size differ."""
    return _tiled(old != new)


def region_tiles(area: Rect, width: int, height: int) -> TileMask:
    """Tiles that intersect `area`."""
    mask = np.zeros((-(-height // TILE), -(-width // TILE)), dtype=np.bool_)
    if not area.empty:
        mask[
            area.y // TILE : -(-(area.y + area.height) // TILE),
            area.x // TILE : -(-(area.x + area.width) // TILE),
        ] = True
    return mask


def covered_tiles(area: Rect, width: int, height: int) -> TileMask:
    """Tiles lying wholly inside `area` (a tile cut by the frame's edge counts whole)."""
    mask = np.zeros((-(-height // TILE), -(-width // TILE)), dtype=np.bool_)
    right = area.x + area.width
    bottom = area.y + area.height
    last_column = mask.shape[1] if right >= width else right // TILE
    last_row = mask.shape[0] if bottom >= height else bottom // TILE
    if not area.empty:
        mask[-(-area.y // TILE) : last_row, -(-area.x // TILE) : last_column] = True
    return mask


def bounding_box(tiles: TileMask, width: int, height: int, margin: int = 0) -> Rect:
    """The pixels of the marked tiles' bounding box (not empty), grown by `margin`,
    clipped to the frame."""
    rows, columns = np.flatnonzero(tiles.any(axis=1)), np.flatnonzero(tiles.any(axis=0))
    x, y = int(columns[0]) * TILE - margin, int(rows[0]) * TILE - margin
    right = (int(columns[-1]) + 1) * TILE + margin
    bottom = (int(rows[-1]) + 1) * TILE + margin
    x, y = max(x, 0), max(y, 0)
    return Rect(x, y, min(right, width) - x, min(bottom, height) - y)


def tile_rects(tiles: TileMask, width: int, height: int) -> list[Rect]:
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


def estimate_motion(old: Frame, new: Frame, tiles: TileMask) -> tuple[int, int] | None:
    """A candidate (dx, dy) offset for CopyRect from a few probe rows and columns through
    the marked tiles (and MAX_MOTION pixels around them), or None when standing still
    matches the probes best."""
    height, width = new.shape
    box = bounding_box(tiles, width, height)
    near = bounding_box(tiles, width, height, MAX_MOTION)
    rows = np.linspace(box.y, box.y + box.height - 1, _PROBES + 2, dtype=np.intp)[1:-1]
    columns = np.linspace(box.x, box.x + box.width - 1, _PROBES + 2, dtype=np.intp)[1:-1]
    across = slice(near.x, near.x + near.width)
    down = slice(near.y, near.y + near.height)
    dx, x_score = _best_shift(old[rows, across], new[rows, across])
    dy, y_score = _best_shift(old[down, columns].T, new[down, columns].T)
    if x_score >= y_score:
        return None if dx == 0 else (dx, 0)
    return None if dy == 0 else (0, dy)


def copyable_tiles(old: Frame, new: Frame, tiles: TileMask, dx: int, dy: int) -> TileMask:
    """Marked tiles whose new pixels all equal the old frame at (x - dx, y - dy)."""
    height, width = new.shape
    box = bounding_box(tiles, width, height)
    same = np.zeros((box.height, box.width), dtype=np.bool_)
    top, bottom = max(dy, box.y), min(height + dy, box.y + box.height)
    left, right = max(dx, box.x), min(width + dx, box.x + box.width)
    if top < bottom and left < right:
        same[top - box.y : bottom - box.y, left - box.x : right - box.x] = (
            new[top:bottom, left:right] == old[top - dy : bottom - dy, left - dx : right - dx]
        )
    # A tile qualifies only if every pixel matched: reduce "any mismatch" per tile.
    moved = np.zeros_like(tiles)
    rows = slice(box.y // TILE, -(-(box.y + box.height) // TILE))
    columns = slice(box.x // TILE, -(-(box.x + box.width) // TILE))
    moved[rows, columns] = tiles[rows, columns] & ~_tiled(~same)
    return moved


def copy_order(rects: list[Rect], dx: int, dy: int) -> list[Rect]:
    """CopyRects ordered so none reads pixels an earlier one in the update overwrote.

    Every source lies upstream of its destination by (dx, dy); doing the rectangles
    furthest downstream first leaves each source intact until it has been read.
    """
    x_sign, y_sign = (dx > 0) - (dx < 0), (dy > 0) - (dy < 0)
    return sorted(rects, key=lambda rect: (-rect.y * y_sign, -rect.x * x_sign))
