"""FramebufferUpdate messages for one client, from the frames it has and should have.

`UpdateEncoder` remembers the last frame each client was sent, so an incremental
request costs only the tiles that changed since: CopyRect for tiles that moved,
the client's preferred encoding (ZRLE or Raw) for the rest. When the guest changes
mode it announces the new size with the DesktopSize pseudo-encoding if the client
supports it, and otherwise crops or pads the picture to the size the client has.
"""

from typing import Final

import numpy as np

from pvdisplay.outputs.vnc import damage, rfb
from pvdisplay.outputs.vnc.damage import Rect
from pvdisplay.outputs.vnc.pixels import SERVER_FORMAT, Frame, RfbPixelFormat, pixel_bytes
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
        self._sent: Frame | None = None
        self._sent_is_own = False
        self._zrle = ZrleEncoder()

    @property
    def encoding(self) -> int:
        """The pixel encoding used: the client's first choice among those we implement."""
        for encoding in self.encodings:
            if encoding in PIXEL_ENCODINGS:
                return encoding
        return rfb.ENCODING_RAW

    def update(self, frame: Frame, area: Rect, incremental: bool) -> bytes | None:
        """The FramebufferUpdate answering a request for `area`, or None if nothing changed
        (an incremental request then waits for the next frame)."""
        prefix = []
        if frame.shape != (self.height, self.width):
            if rfb.ENCODING_DESKTOP_SIZE in self.encodings:
                self.height, self.width = frame.shape
                prefix.append(rfb.desktop_size(self.width, self.height))
                self._sent = None
                area, incremental = Rect(0, 0, self.width, self.height), False
            else:
                frame = fit(frame, self.width, self.height)
        area = area.clip(self.width, self.height)
        copies: list[tuple[Rect, int, int]] = []
        if incremental and self._sent is not None:
            tiles = damage.changed_tiles(self._sent, frame) & damage.region_tiles(
                area, self.width, self.height
            )
            if not tiles.any():
                return None
            copies = self._copies(frame, tiles)
            rects = damage.tile_rects(tiles, self.width, self.height)
        else:
            rects = [] if area.empty else [area]
        body = [rfb.copy_rect(rect, rect.x - dx, rect.y - dy) for rect, dx, dy in copies]
        for rect in rects:
            region = frame[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
            body.append(rfb.rect_header(rect, self.encoding) + self._encode(region))
        self._remember(frame, [rect for rect, _, _ in copies] + rects)
        count = len(prefix) + len(body)
        return rfb.update_header(count) + b"".join(prefix) + b"".join(body)

    def _copies(self, frame: Frame, tiles: damage.Mask) -> list[tuple[Rect, int, int]]:
        """CopyRects for moved tiles (removed from `tiles`), in a safe order."""
        if rfb.ENCODING_COPYRECT not in self.encodings or self._sent is None:
            return []
        motion = damage.estimate_motion(self._sent, frame)
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

    def _remember(self, frame: Frame, rects: list[Rect]) -> None:
        """Track what the client's framebuffer holds now. Frames are never modified in
        place, so a whole-frame update keeps a reference instead of a copy; partial updates
        then patch one private copy instead of copying the frame every time."""
        covered = sum(rect.width * rect.height for rect in rects)
        if covered == self.width * self.height:
            self._sent, self._sent_is_own = frame, False
            return
        sent = self._sent
        if sent is None:
            sent = np.zeros((self.height, self.width), dtype=np.uint32)
        elif not self._sent_is_own:  # a shared frame: patch a private copy, once
            sent = sent.copy()
        for rect in rects:
            window = (slice(rect.y, rect.y + rect.height), slice(rect.x, rect.x + rect.width))
            sent[window] = frame[window]
        self._sent, self._sent_is_own = sent, True
