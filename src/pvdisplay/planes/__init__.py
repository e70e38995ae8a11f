"""What each connector shows, and the input sent back to it.

- `model`: `PlaneKey`, `PlaneInfo`, `Plane`, and `PlaneRegistry` (no I/O).
- `input_events`, `contacts`: input as outputs produce it, in connector pixels.
- `server`: the planes socket, serving a registry to other local processes.
- `client`: the blocking client; `aio`: the asyncio one that outputs build on.
"""
