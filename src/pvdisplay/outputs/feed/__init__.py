"""What every output reads: the planes socket followed, and each connector's picture.

- `rect`: `Rect`, a rectangle of a connector's picture in pixels.
- `mirror`: a connector's picture kept current tile by tile, with the clock that tells
  each reader what changed since the picture it was last given.
- `buffers`: the guest's display buffers, mapped once and kept while the guest flips.
- `rates`: frames per second and flip latency of a connector.
- `plane_feed`: `PlaneFeed`, which watches the socket (reconnecting), keeps the above per
  connector, and forwards input.
"""
