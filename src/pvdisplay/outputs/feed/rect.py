"""A rectangle of a connector's picture, in pixels."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int

    def clip(self, width: int, height: int) -> "Rect":
        """The part of this rectangle inside a `width`x`height` picture."""
        x, y = min(max(self.x, 0), width), min(max(self.y, 0), height)
        return Rect(x, y, min(self.width, width - x), min(self.height, height - y))

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0
