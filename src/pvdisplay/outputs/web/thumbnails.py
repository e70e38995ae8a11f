"""The index's thumbnails: each connector's picture, small, refreshed at most once a second.

A thumbnail is made from the connector's mirror, the picture the feed already keeps
current for every viewer (`PlaneFeed.capture`: when a viewer is watching, the update is
shared with it), box-filtered down to fit `BOX` and encoded as one small JPEG. Every page
fetches the same bytes, by version; nothing is encoded per page, and nothing at all while
no index page is open.

Budget: one pass over the connectors at most every `PERIOD`, and passes take at most
`SHARE` of the time (a pass that took t seconds waits at least t * (1 / SHARE - 1) before
the next), so many large connectors make thumbnails slower, never the server busier.
"""

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

from pvdisplay import logs
from pvdisplay.outputs.feed.mirror import GuestMirror
from pvdisplay.outputs.feed.plane_feed import PlaneFeed
from pvdisplay.outputs.feed.rect import Rect
from pvdisplay.outputs.web.tiles import Picture, encode_jpeg
from pvdisplay.planes.model import PlaneKey

log = logging.getLogger(__name__)

BOX: Final = (320, 200)
"""A thumbnail fits in this many pixels (width, height); the picture's aspect is kept."""
PERIOD: Final = 1.0
SHARE: Final = 0.1
QUALITY: Final = 75


def make_thumbnail(picture: Picture) -> bytes:
    """`picture` reduced by a whole factor (each thumbnail pixel the mean of a square of
    the picture's) until it fits `BOX`, as JPEG."""
    factor = max(math.ceil(picture.width / BOX[0]), math.ceil(picture.height / BOX[1]), 1)
    size = (picture.width, picture.height)
    colourspace = picture.own_colourspace
    if colourspace is None:
        image = Image.fromarray(picture.rgb(Rect(0, 0, *size)))
    else:  # Pillow reads the guest's own bytes (BGRX, BGR): no conversion pass first
        rows = picture.data[: picture.height * picture.stride]
        image = Image.frombuffer("RGB", size, rows, "raw", colourspace, picture.stride, 1)
    return encode_jpeg(np.asarray(image.reduce(factor)), QUALITY)


def pause_after(spent: float) -> float:
    """Seconds to wait after a pass that took `spent`: the rest of `PERIOD`, or longer so
    that passes take at most `SHARE` of the time."""
    return max(PERIOD - spent, spent * (1 / SHARE - 1))


@dataclass(frozen=True)
class Thumbnail:
    version: str
    """Unique, also across viewers that served the same address before: pages fetch
    `/thumb/KEY?v=VERSION`, which browsers keep for an hour."""
    jpeg: bytes
    mirror: GuestMirror
    generation: int
    """The mirror's generation it shows: unchanged, it is not made again."""


class Thumbnails:
    """Thumbnails of every connector `feed` shows, kept fresh while `watched`."""

    def __init__(self, feed: PlaneFeed[GuestMirror], encoders: Executor) -> None:
        self.feed = feed
        self.encoders = encoders
        self._made: dict[PlaneKey, Thumbnail] = {}
        # Each viewer counts its versions from 1, after an epoch of its own.
        self._epoch = secrets.token_hex(4)
        self._versions = itertools.count(1)
        self._watchers = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def watchers(self) -> int:
        """Callers inside `watched` now."""
        return self._watchers

    def version(self, key: PlaneKey) -> str:
        """The connector's thumbnail version, "" when it has none."""
        made = self._made.get(key)
        return "" if made is None else made.version

    def jpeg(self, key: PlaneKey) -> bytes | None:
        made = self._made.get(key)
        return None if made is None else made.jpeg

    @contextlib.asynccontextmanager
    async def watched(self) -> AsyncIterator[None]:
        """Keep thumbnails fresh while any caller is inside."""
        self._watchers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever())
        try:
            yield
        finally:
            self._watchers -= 1
            if self._watchers == 0:
                await self.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_forever(self) -> None:
        while True:
            started = time.monotonic()
            for key in list(self.feed.planes):
                try:
                    await self._refresh(key)
                except Exception:  # one picture's failure must not end every thumbnail
                    log.exception("thumbnail failed", extra=logs.fields(plane=key))
                    self._made.pop(key, None)
            for key in set(self._made) - set(self.feed.planes):
                del self._made[key]
            await asyncio.sleep(pause_after(time.monotonic() - started))

    async def _refresh(self, key: PlaneKey) -> None:
        capture = await self.feed.capture(key)
        if capture is None:  # blank, or unreadable: no picture to show
            self._made.pop(key, None)
            return
        mirror, generation = capture.snapshot.mirror, capture.snapshot.generation
        made = self._made.get(key)
        if made is not None and made.mirror is mirror and made.generation == generation:
            return
        jpeg = await asyncio.get_running_loop().run_in_executor(
            self.encoders, make_thumbnail, Picture.of(mirror)
        )
        version = f"{self._epoch}-{next(self._versions)}"
        self._made[key] = Thumbnail(version, jpeg, mirror, generation)
