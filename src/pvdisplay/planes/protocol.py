"""The planes socket's messages, built and read without I/O: both clients and the server
speak through this module.

Socket protocol (SOCK_SEQPACKET, each message a JSON object framed by `pvdisplay.ipc`):

- `{"op": "list"}` -> `{"planes": [PLANE, ...]}`
- `{"op": "get", "domid": D, "devid": V, "connector": C}` -> `{"plane": PLANE, "buffer": B}`;
  when `B` is true, the buffer handle follows as the next message (`SharedBuffer.send`).
- `{"op": "copy", "domid": D, "devid": V, "connector": C}` -> `{"plane": PLANE, "buffer": true}`
  and a handle of a buffer of the server's own holding the picture (PLANE's `frame_bytes`
  from its start), copied while the connector showed that one frame. ENOENT when the
  connector shows nothing.
- `{"op": "watch"}` -> `{"watching": true}`, then `{"event": "changed", "plane": PLANE}` or
  `{"event": "removed", "plane": PLANE}` for every change, in order.
- `{"op": "input", "domid": D, "devid": V, "connector": C, "events": [EVENT, ...]}` ->
  `{"queued": N, "dropped": M}`: hands `pvdisplay.planes.input_events` (at most
  `MAX_INPUT_EVENTS`) to the backend's input handler, which routes them to the vkbd bound
  to the connector (docs/input.md). ENOENT when none is, EINVAL for a bad event.
- anything else -> `{"error": ERRNO, "message": TEXT}`.
"""

import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pvdisplay.ipc import framing
from pvdisplay.planes import input_events
from pvdisplay.planes.input_events import MAX_INPUT_EVENTS, InputReceipt
from pvdisplay.planes.model import PlaneInfo, PlaneKey
from pvdisplay.wire.errors import ProtocolError

LIST: Final[framing.JsonObject] = {"op": "list"}
WATCH: Final[framing.JsonObject] = {"op": "watch"}
WATCHING: Final[framing.JsonObject] = {"watching": True}


@dataclass(frozen=True)
class PlaneChange:
    plane: PlaneInfo
    removed: bool


# -- requests (clients) ---------------------------------------------------------------------


def get_request(key: PlaneKey) -> framing.JsonObject:
    return {"op": "get", "domid": key.domid, "devid": key.devid, "connector": key.connector}


def copy_request(key: PlaneKey) -> framing.JsonObject:
    return {"op": "copy", "domid": key.domid, "devid": key.devid, "connector": key.connector}


def input_request(key: PlaneKey, events: Sequence[input_events.InputEvent]) -> framing.JsonObject:
    return {
        "op": "input",
        "domid": key.domid,
        "devid": key.devid,
        "connector": key.connector,
        "events": [input_events.to_json(event) for event in events],
    }


# -- replies (clients) ----------------------------------------------------------------------


def checked(reply: framing.JsonObject) -> framing.JsonObject:
    """`reply`, unless it is an error: then OSError with the server's errno."""
    error = reply.get("error")
    if isinstance(error, int):
        raise OSError(error, str(reply.get("message", "")))
    return reply


def planes_of(reply: framing.JsonObject) -> list[PlaneInfo]:
    planes = reply.get("planes")
    if not isinstance(planes, list):
        raise ProtocolError(errno.EINVAL, "list reply without planes")
    return [PlaneInfo.from_json(p) for p in planes]


def plane_of(reply: framing.JsonObject) -> tuple[PlaneInfo, bool]:
    """The plane a get reply carries, and whether its buffer handle follows."""
    return PlaneInfo.from_json(reply.get("plane")), reply.get("buffer") is True


def receipt_of(reply: framing.JsonObject) -> InputReceipt:
    queued, dropped = reply.get("queued"), reply.get("dropped")
    if not isinstance(queued, int) or not isinstance(dropped, int):
        raise ProtocolError(errno.EINVAL, "input reply without queued/dropped")
    return InputReceipt(queued, dropped)


def change_of(event: framing.JsonObject) -> PlaneChange:
    return PlaneChange(PlaneInfo.from_json(event.get("plane")), event.get("event") == "removed")


# -- the server's side ----------------------------------------------------------------------


def key_of(request: Mapping[str, object]) -> PlaneKey:
    """The connector a get or input request names."""
    return PlaneKey(
        framing.get_int(request, "domid", 0xFFFF),
        framing.get_int(request, "devid"),
        framing.get_int(request, "connector"),
    )


def events_of(request: Mapping[str, object]) -> list[input_events.InputEvent]:
    raw = request.get("events")
    if not isinstance(raw, list) or len(raw) > MAX_INPUT_EVENTS:
        raise ProtocolError(errno.EINVAL, f"events must be a list of <= {MAX_INPUT_EVENTS}")
    return [input_events.from_json(item) for item in raw]


def error_reply(code: int, message: str) -> framing.JsonObject:
    return {"error": code, "message": message}


def change_event(info: PlaneInfo, removed: bool) -> framing.JsonObject:
    return {"event": "removed" if removed else "changed", "plane": info.to_json()}
