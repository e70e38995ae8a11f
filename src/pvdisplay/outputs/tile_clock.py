"""The part the VNC and web mirrors share: a per-tile generation clock, and tile runs.

A mirror keeps a connector's picture current in place, tile by tile. Each update that
changes something is a new generation, and the clock records which generation last wrote
each tile, so any number of readers learn what changed since the generation they were
last given (`changed_since`) without comparing pixels themselves.
"""

import numpy as np
import numpy.typing as npt

TileMask = npt.NDArray[np.bool_]
"""One flag per tile, rows by columns."""


class TileClock:
    """The generation that last wrote each tile of a `grid` (rows, columns) of tiles."""

    def __init__(self, grid: tuple[int, int]) -> None:
        self.generation = 0
        self._clock = np.zeros(grid, dtype=np.int64)

    def changed_since(self, generation: int) -> TileMask:
        """The tiles written after `generation`."""
        return self._clock > generation

    def _tick(self, mask: TileMask) -> None:
        """Stamp the tiles an update wrote with a new generation (the first update always
        makes one: it took the whole picture)."""
        if self.generation == 0 or mask.any():
            self.generation += 1
            self._clock[mask] = self.generation


def runs(row: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive set tiles in `row`."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
