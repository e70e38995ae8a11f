"""The XenBus handshake vocabulary both halves of a PV device share (xen/io/xenbus.h).

Device directories follow libxl's layout:

    /local/domain/<frontend>/device/<kind>/<devid>            frontend, owned by the guest
    /local/domain/<backend>/backend/<kind>/<frontend>/<devid>  backend, owned by the backend
"""

import enum
import errno

from pvdisplay.wire.errors import ProtocolError

FIELD_STATE = "state"
FIELD_BACKEND = "backend"
FIELD_BACKEND_ID = "backend-id"
FIELD_FRONTEND = "frontend"
FIELD_FRONTEND_ID = "frontend-id"
FIELD_ONLINE = "online"

VINPUT = "vinput"
"""libxl's backend kind for a vkb with `backend-type=linux` (a backend in a Linux domain,
not QEMU): its backend is `backend/vinput/...`, its frontend still `device/vkbd/...`."""


class XenbusState(enum.IntEnum):
    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    def encode(self) -> str:
        return str(int(self))


def parse_state(value: bytes | str) -> XenbusState:
    """Decode a `state` node; a peer writing garbage is a protocol error, not a crash."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    try:
        return XenbusState(int(text.strip("\0")))
    except ValueError:
        raise ProtocolError(errno.EINVAL, f"invalid XenbusState {text!r}") from None


def frontend_path(frontend: int, kind: str, devid: int) -> str:
    return f"/local/domain/{frontend}/device/{kind}/{devid}"


def backend_path(backend: int, kind: str, frontend: int, devid: int) -> str:
    return f"/local/domain/{backend}/backend/{kind}/{frontend}/{devid}"
