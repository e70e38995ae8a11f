"""FramebufferUpdate messages for one client, from the frames it has and should have.

`UpdateEncoder` remembers the last frame each client was sent, so an incremental
request costs only the tiles that changed since: CopyRect for tiles that moved,
the client's preferred encoding (ZRLE or Raw) for the rest. When the guest changes
mode it announces the new size with the DesktopSize pseudo-encoding if the client
supports it, and otherwise crops or pads the picture to the size the client has.
"""

from typing import Final

import numpy as np

from pvdisplay.outputs.feed.mirror import Frame, TileMask
from pvdisplay.outputs.feed.rect import Rect
from pvdisplay.outputs.vnc import damage, rfb
from pvdisplay.outputs.vnc.pixels import SERVER_FORMAT, RfbPixelFormat, pixel_bytes
from pvdisplay.outputs.vnc.zrle import ZrleEncoder

# In our order of preference; pseudo-encodings and anything else are ignored.
PIXEL_ENCODINGS: Final = (rfb.ENCODING_ZRLE, rfb.ENCODING_RAW)


def fit(frame: Frame, width: int, height: int) -> Frame:
    """`frame` cropped or padded with black to width x height."""
    if frame.shape == (height, width):
        return frame
    fitted = np.zeros((height, width), dtype=np.uint32)
    rows, columns = min(height, frame.shape[0]), min(width, frame.shape[1])
    fitted[:rows, :columns] = frame[:rows, :columns]
    return fitted


class UpdateEncoder:
    """Builds one client's updates; starts at the size announced in ServerInit."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixel_format: RfbPixelFormat = SERVER_FORMAT
        self.encodings: tuple[int, ...] = ()
        # What the client's framebuffer holds (exactly: patched with what was encoded), and
        # the tiles where it may differ from the frame last given to `update`.
        self._sent: Frame | None = None
        self._pending: TileMask | None = None
        self._zrle = ZrleEncoder()

    @property
    def encoding(self) -> int:
        """The pixel encoding used: the client's first choice among those we implement."""
        for encoding in self.encodings:
            if encoding in PIXEL_ENCODINGS:
                return encoding
        return rfb.ENCODING_RAW

    def update(
        self, frame: Frame, area: Rect, incremental: bool, changed: TileMask | None = None
    ) -> bytes | None:
        """The FramebufferUpdate answering a request for `area`, or None if nothing changed
        (an incremental request then waits for the next frame).

        `changed`: the tiles of `frame` that may differ from the frame of the previous call
        (a mirror's clock knows them), so nothing is compared; None: not known,
        compare `frame` with what the client holds. `frame` may be written meanwhile:
        the client's copy is kept from what was encoded, not from `frame`.
        """
        prefix = []
        if frame.shape != (self.height, self.width):
            changed = None
            if rfb.ENCODING_DESKTOP_SIZE in self.encodings:
                self.height, self.width = frame.shape
                prefix.append(rfb.desktop_size(self.width, self.height))
                self._sent = None
                area, incremental = Rect(0, 0, self.width, self.height), False
            else:
                frame = fit(frame, self.width, self.height)
        area = area.clip(self.width, self.height)
        if self._sent is None or self._pending is None:
            everything = Rect(0, 0, self.width, self.height)
            self._pending = damage.region_tiles(everything, self.width, self.height)
        elif changed is None:
            self._pending = damage.changed_tiles(self._sent, frame)
        else:
            self._pending |= changed
        copies: list[tuple[Rect, int, int]] = []
        if incremental and self._sent is not None:
            tiles = self._pending & damage.region_tiles(area, self.width, self.height)
            if not tiles.any():
                return None
            self._pending &= ~tiles
            copies = self._copies(frame, tiles)
            rects = damage.tile_rects(tiles, self.width, self.height)
        else:
            rects = [] if area.empty else [area]
            self._pending &= ~damage.covered_tiles(area, self.width, self.height)
        body = [rfb.copy_rect(rect, rect.x - dx, rect.y - dy) for rect, dx, dy in copies]
        whole = not copies and sum(r.width * r.height for r in rects) == self.width * self.height
        # What is encoded is copied first (the frame may be written meanwhile), once.
        source = frame.copy() if whole else frame
        encoded = []
        for rect in rects:
            region = source[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
            region = region if whole else region.copy()
            body.append(rfb.rect_header(rect, self.encoding) + self._encode(region))
            encoded.append((rect, region))
        if whole:
            self._sent = source
        else:
            self._remember(copies, encoded)
        count = len(prefix) + len(body)
        return rfb.update_header(count) + b"".join(prefix) + b"".join(body)

    def _copies(self, frame: Frame, tiles: TileMask) -> list[tuple[Rect, int, int]]:
        """CopyRects for moved tiles (removed from `tiles`), in a safe order."""
        if rfb.ENCODING_COPYRECT not in self.encodings or self._sent is None:
            return []
        motion = damage.estimate_motion(self._sent, frame, tiles)
        if motion is None:
            return []
        dx, dy = motion
        moved = damage.copyable_tiles(self._sent, frame, tiles, dx, dy)
        if not moved.any():
            return []
        tiles &= ~moved
        rects = damage.tile_rects(moved, self.width, self.height)
        return [(rect, dx, dy) for rect in damage.copy_order(rects, dx, dy)]

    def _encode(self, region: Frame) -> bytes:
        if self.encoding == rfb.ENCODING_ZRLE:
            return self._zrle.encode(region, self.pixel_format)
        return pixel_bytes(region, self.pixel_format)

    def _remember(
        self, copies: list[tuple[Rect, int, int]], encoded: list[tuple[Rect, Frame]]
    ) -> None:
        """Do to our copy of the client's framebuffer what the update does to it."""
        if self._sent is None:
            self._sent = np.zeros((self.height, self.width), dtype=np.uint32)
        sent = self._sent
        for rect, dx, dy in copies:
            source = sent[
                rect.y - dy : rect.y - dy + rect.height, rect.x - dx : rect.x - dx + rect.width
            ]
            sent[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = source
        for rect, region in encoded:
            sent[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = region
