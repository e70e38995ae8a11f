"""One viewer of one connector: what it has, what to send it next, and when.

Flow control is by acknowledgement: the page acks each frame once it is drawn, and at
most `WINDOW` frames are ever unacknowledged. Frames the guest flips meanwhile are never
queued; the next frame sent is the newest picture, diffed against the last one sent (the
page's canvas holds exactly that). No I/O here: the adapter captures, calls `plan` and
`finish`, and runs the encoding where it likes.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pvdisplay.outputs.web import tiles
from pvdisplay.outputs.web.tiles import Picture, Quality, Rect, Tile

# Two in flight: the server encodes frame N+1 while the page decodes frame N.
WINDOW: Final = 2


@dataclass(frozen=True)
class FramePlan:
    """A frame to send: the picture and the rectangles of it the page does not have yet."""

    seq: int
    picture: Picture
    rects: list[Rect]


class ViewerSession:
    def __init__(self, quality: Quality, window: int = WINDOW) -> None:
        self.quality = quality
        self.window = window
        self._sent: Picture | None = None
        self._seq = 0
        self._acked = 0

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

    def plan(self, picture: Picture) -> FramePlan | None:
        """The next frame for `picture` (a capture), or None if nothing changed.

        The picture becomes the reference for the next diff at once: frames are sent in
        order on one stream, so the page has it by the time it draws the next one.
        """
        rects = tiles.changed_rects(self._sent, picture)
        self._sent = picture
        if not rects:
            return None
        self._seq += 1
        return FramePlan(self._seq, picture, rects)

    def encode(self, plan: FramePlan, rect: Rect) -> Tile:
        return tiles.encode_rect(plan.picture, rect, self.quality)

    @staticmethod
    def message(plan: FramePlan, header: dict[str, object], encoded: Sequence[Tile]) -> bytes:
        return tiles.pack_frame({**header, "seq": plan.seq}, encoded)
