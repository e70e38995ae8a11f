"""Frames per second and flip latency of one connector, from the plane changes seen."""

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from pvdisplay.planes.model import PlaneInfo

RATE_WINDOW: Final = 1.0


@dataclass
class PlaneRate:
    flips: deque[tuple[float, int]] = field(default_factory=deque)
    latency: float = 0.0

    def update(self, info: PlaneInfo, now: float, wall: float) -> None:
        self.flips.append((now, info.frame))
        while self.flips and now - self.flips[0][0] > RATE_WINDOW:
            self.flips.popleft()
        self.latency = max(wall - info.presented_at, 0.0)

    def fps(self, now: float) -> float:
        if len(self.flips) < 2 or now - self.flips[-1][0] > RATE_WINDOW:
            return 0.0
        (first, frame0), (last, frame1) = self.flips[0], self.flips[-1]
        return (frame1 - frame0) / (last - first) if last > first else 0.0
