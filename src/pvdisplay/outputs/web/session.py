"""One viewer of one connector: what it has, what to send it next, and when.

Flow control is by acknowledgement: the page acks each frame once it is drawn, and at
most `WINDOW` frames are ever unacknowledged. Frames the guest flips meanwhile are never
queued; the next frame sent is the newest picture, diffed against the last one sent (the
page's canvas holds exactly that). No I/O here: the adapter captures, calls `plan` and
`message`, and runs the encoding where it likes.

Full-screen motion goes as one JPEG, whatever PNG would have saved; once the picture has
been still for `REFRESH_DELAY`, the tiles sent that way are sent again with the usual
choice (so still text ends up as sharp as if it had never moved), when `refresh_in` says.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from pvdisplay.outputs.feed.mirror import GuestMirror, Snapshot, TileMask
from pvdisplay.outputs.feed.rect import Rect
from pvdisplay.outputs.web import tiles
from pvdisplay.outputs.web.tiles import Picture, Quality, Tile

# Two in flight: the server encodes frame N+1 while the page decodes frame N.
WINDOW: Final = 2
REFRESH_DELAY: Final = 0.3


@dataclass(frozen=True)
class FramePlan:
    """A frame to send: the picture and the rectangles of it the page does not have yet."""

    seq: int
    snapshot: Snapshot[GuestMirror]
    rects: list[Rect]
    motion: bool = False
    """One rectangle, sent as JPEG without trying PNG."""

    @property
    def picture(self) -> Picture:
        return Picture.of(self.snapshot.mirror)


class ViewerSession:
    def __init__(self, quality: Quality, window: int = WINDOW) -> None:
        self.quality = quality
        self.window = window
        self._sent: Snapshot[GuestMirror] | None = None
        self._seq = 0
        self._acked = 0
        # Tiles the page holds from a motion frame, and when the picture last changed.
        self._lossy: TileMask | None = None
        self._changed_at = 0.0

    @property
    def in_flight(self) -> int:
        return self._seq - self._acked

    def can_send(self) -> bool:
        return self.in_flight < self.window

    def ack(self, seq: int) -> None:
        """The page drew frame `seq` (and every frame before it). Stale or future acks
        are ignored: a page cannot open the window wider than `window`."""
        if self._acked < seq <= self._seq:
            self._acked = seq

    def reset(self) -> None:
        """The page's canvas is no longer a frame we sent (new mode, guest gone): the
        next frame is sent whole."""
        self._sent = None
        self._lossy = None

    def refresh_in(self, now: float) -> float | None:
        """Seconds until `plan` would refresh tiles sent as motion, None if there are none."""
        if self._lossy is None:
            return None
        return max(self._changed_at + REFRESH_DELAY - now, 0.0)

    def plan(self, snapshot: Snapshot[GuestMirror], now: float) -> FramePlan | None:
        """The next frame for `snapshot` (of the connector's mirror, at monotonic time
        `now`), or None if there is nothing to send.

        The snapshot becomes the reference for the next diff at once: frames are sent in
        order on one stream, so the page has it by the time it draws the next one.
        """
        mirror = snapshot.mirror
        mask = snapshot.changed_after(self._sent)
        if mask is None:  # the page holds none of this mirror: all of it
            mask = np.ones(mirror.grid, dtype=bool)
        if self._lossy is not None and self._lossy.shape != mask.shape:
            self._lossy = None  # a new geometry: all of it is sent anew
        self._sent = snapshot
        if not mask.any():
            if self._lossy is None or now - self._changed_at < REFRESH_DELAY:
                return None
            mask, self._lossy = self._lossy, None
            return self._next(snapshot, tiles.mask_rects(mask, mirror.width, mirror.height))
        self._changed_at = now
        if isinstance(self.quality, int) and tiles.is_motion(mask):
            box = tiles.bounding_rect(mask, mirror.width, mirror.height)
            covered = tiles.rect_tiles(box, mask.shape)
            self._lossy = covered if self._lossy is None else self._lossy | covered
            return self._next(snapshot, [box], motion=True)
        if self._lossy is not None:
            self._lossy &= ~mask
            if not self._lossy.any():
                self._lossy = None
        return self._next(snapshot, tiles.mask_rects(mask, mirror.width, mirror.height))

    def _next(
        self, snapshot: Snapshot[GuestMirror], rects: list[Rect], motion: bool = False
    ) -> FramePlan:
        self._seq += 1
        return FramePlan(self._seq, snapshot, rects, motion)

    def encode(self, plan: FramePlan, rect: Rect) -> Tile:
        if plan.motion and isinstance(self.quality, int):
            return tiles.encode_motion(plan.picture, rect, self.quality)
        return tiles.encode_rect(plan.picture, rect, self.quality)

    @staticmethod
    def message(plan: FramePlan, header: dict[str, object], encoded: Sequence[Tile]) -> bytes:
        return tiles.pack_frame({**header, "seq": plan.seq}, encoded)
