"""The frontend's protocol core, sans-IO: request ids, responses, events, XenBus states.

Everything here works on buffers (the shared ring and event pages) and plain values;
`pvdisplay.display.front` wires it to XenStore, event channels and grants.
Linux xen-front is the model: event ids count from 0 per connection and an event with an
unexpected id is skipped; a response is matched to its request by id alone.
"""

import enum
import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pvdisplay.wire import displif
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.layout import WritableBuffer
from pvdisplay.wire.ring import FrontRing
from pvdisplay.xenbus import XenbusState

REQUEST_ID_SPACE = 1 << 16
_EVENT_ID = struct.Struct("<H")


@dataclass(frozen=True)
class Reply:
    """The response to request `request_id`; `operation` is the one the request carried."""

    request_id: int
    operation: int
    status: int
    edid_sz: int = 0


@dataclass(frozen=True)
class FlipDone:
    """Both halves of a page flip arrived: an OK response and its EVT_PG_FLIP."""

    request_id: int
    fb_cookie: int


Outcome = Reply | FlipDone


@dataclass
class _Flip:
    fb_cookie: int
    replied: bool = False
    event_seen: bool = False


class ConnectorChannel:
    """One connector's request ring and event page, as the frontend sees them.

    `send` allocates a request id not in flight and publishes the request; `receive`
    drains responses and events and says which requests finished. Responses for ids
    not in flight (late after a timeout, or invented by the backend) are dropped.
    A backend that publishes impossible indices raises `ProtocolError(EIO)`.
    """

    def __init__(self, ring_area: WritableBuffer, event_page: WritableBuffer) -> None:
        self._ring = FrontRing(ring_area, displif.REQUEST_SIZE)
        self._events = memoryview(event_page).cast("B")
        if len(self._events) < displif.EVENT_PAGE_SIZE:
            raise ValueError(f"an event page is {displif.EVENT_PAGE_SIZE} bytes")
        self._event_indices = displif.page_indices(self._events)
        self._event_cons = self._event_indices.load(displif.IN_CONS_OFFSET)
        self._next_event_id = 0
        self._next_request_id = 0
        self._in_flight: dict[int, int] = {}
        self._flips: dict[int, _Flip] = {}
        self.stray_responses = 0
        self.skipped_events = 0

    @property
    def in_flight(self) -> frozenset[int]:
        return frozenset(self._in_flight)

    @property
    def free_slots(self) -> int:
        return self._ring.free_requests

    def send(self, build: Callable[[int], displif.Request]) -> tuple[int, bool]:
        """Publish `build(request_id)`; returns the id and whether to notify the backend.

        Raises `RingFullError` when every slot holds a request still unanswered.
        """
        slot = self._ring.new_request()
        request_id = self._allocate_id()
        request = build(request_id)
        slot[:] = request.encode()
        self._in_flight[request_id] = request.operation
        if isinstance(request, displif.PageFlip):
            self._flips[request_id] = _Flip(request.fb_cookie)
        return request_id, self._ring.push_requests()

    def forget(self, request_id: int) -> None:
        """Stop waiting for `request_id` (timed out); a late response is then dropped."""
        self._in_flight.pop(request_id, None)
        self._flips.pop(request_id, None)

    def forget_flip_event(self, request_id: int) -> None:
        """Stop waiting for the event of a flip whose response already came."""
        self._flips.pop(request_id, None)

    def receive(self) -> list[Outcome]:
        """Consume every published response and event, then re-arm notifications."""
        outcomes: list[Outcome] = []
        while True:
            while (raw := self._ring.take_response()) is not None:
                outcomes.extend(self._on_response(displif.decode_response(raw)))
            if not self._ring.final_check_for_responses():
                break
        outcomes.extend(self._take_events())
        return outcomes

    def release(self) -> None:
        """Let go of the shared pages so their mappings can be closed."""
        self._ring.release()
        self._event_indices.release()
        self._events.release()

    def _allocate_id(self) -> int:
        # At most a ring's worth of ids are in flight, so a free one is always near.
        while self._next_request_id in self._in_flight:
            self._next_request_id = (self._next_request_id + 1) % REQUEST_ID_SPACE
        request_id = self._next_request_id
        self._next_request_id = (request_id + 1) % REQUEST_ID_SPACE
        return request_id

    def _on_response(self, response: displif.Response) -> list[Outcome]:
        operation = self._in_flight.pop(response.id, None)
        if operation is None:
            self.stray_responses += 1
            return []
        status = response.status
        if response.operation != operation:
            status = -errno.EIO
        reply = Reply(response.id, operation, status, response.edid_sz)
        flip = self._flips.get(response.id)
        if flip is None:
            return [reply]
        if status != 0:
            del self._flips[response.id]
            return [reply]
        flip.replied = True
        if flip.event_seen:
            del self._flips[response.id]
            return [reply, FlipDone(response.id, flip.fb_cookie)]
        return [reply]

    def _take_events(self) -> list[Outcome]:
        # Acquire: no slot below is read before the in_prod that covers it.
        prod = self._event_indices.load(displif.IN_PROD_OFFSET)
        if (prod - self._event_cons) & 0xFFFFFFFF > displif.IN_RING_LEN:
            raise ProtocolError(
                errno.EIO,
                f"backend published in_prod {prod:#x}, more than a ring past "
                f"in_cons {self._event_cons:#x}",
            )
        outcomes: list[Outcome] = []
        while self._event_cons != prod:
            offset = displif.in_ring_slot_offset(self._event_cons)
            slot = bytes(self._events[offset : offset + displif.EVENT_SIZE])
            self._event_cons = (self._event_cons + 1) & 0xFFFFFFFF
            expected, self._next_event_id = self._next_event_id, (self._next_event_id + 1) & 0xFFFF
            if _EVENT_ID.unpack_from(slot)[0] != expected:
                self.skipped_events += 1
                continue
            try:
                event = displif.decode_event(slot)
            except ProtocolError:
                self.skipped_events += 1
                continue
            outcomes.extend(self._on_flip_event(event.fb_cookie))
        # Release: the slot copies above are done before the backend may reuse the slots.
        self._event_indices.store(displif.IN_CONS_OFFSET, self._event_cons)
        return outcomes

    def _on_flip_event(self, fb_cookie: int) -> list[Outcome]:
        for request_id, flip in self._flips.items():
            if flip.fb_cookie == fb_cookie and not flip.event_seen:
                if flip.replied:
                    del self._flips[request_id]
                    return [FlipDone(request_id, fb_cookie)]
                flip.event_seen = True
                return []
        self.skipped_events += 1
        return []


class Step(enum.Enum):
    """What the adapter must do, in order, after a state machine input."""

    PUBLISH = "publish"
    """Allocate rings and event channels, publish them and `version`, write Initialised."""
    CONNECT = "connect"
    """Bring the connectors up (EDID when offered), write Connected."""
    RECONFIGURE = "reconfigure"
    """The backend is gone: fail what is in flight, write Reconfiguring."""
    REINITIALISE = "reinitialise"
    """No client holds the old connection: free rings and channels, write Initialising."""


# Backend states that mean the connection we built is gone. InitWait counts once we are
# past Initialising: a restarted backend may reach it before we read its Initialising.
_LOST_WHILE_INITIALISED = frozenset(
    {XenbusState.UNKNOWN, XenbusState.INITIALISING, XenbusState.CLOSED}
)
_LOST_WHILE_CONNECTED = _LOST_WHILE_INITIALISED | {XenbusState.INIT_WAIT}


class FrontendStateMachine:
    """The frontend half of displif.h's state diagrams, including the recovery flow.

    Inputs: the backend's `state` node (None when it is missing), the loss of the
    connection's event channels or rings, and clients taking or releasing resources of
    the current connection. Each input returns the steps to carry out; `state` is the
    frontend state those steps leave behind.
    """

    def __init__(self) -> None:
        self.state = XenbusState.INITIALISING
        self.backend: XenbusState | None = None
        self.clients = 0

    @property
    def accepts_clients(self) -> bool:
        return self.state == XenbusState.CONNECTED

    def backend_changed(self, backend: XenbusState | None) -> list[Step]:
        if backend == self.backend:
            return []
        self.backend = backend
        lost = backend is None or (
            backend in _LOST_WHILE_CONNECTED
            if self.state == XenbusState.CONNECTED
            else backend in _LOST_WHILE_INITIALISED
        )
        match self.state:
            case XenbusState.INITIALISING if backend == XenbusState.INIT_WAIT:
                return self._publish()
            case XenbusState.INITIALISED if backend == XenbusState.CONNECTED:
                self.state = XenbusState.CONNECTED
                return [Step.CONNECT]
            case XenbusState.INITIALISED | XenbusState.CONNECTED if lost:
                return self._lose()
        return []

    def connection_lost(self) -> list[Step]:
        """An event channel turned unbound, or the backend broke the ring protocol."""
        if self.state in (XenbusState.INITIALISED, XenbusState.CONNECTED):
            return self._lose()
        return []

    def client_added(self) -> None:
        if not self.accepts_clients:
            raise ValueError(f"no new clients while {self.state.name}")
        self.clients += 1

    def client_removed(self) -> list[Step]:
        if self.clients == 0:
            raise ValueError("no client to remove")
        self.clients -= 1
        if self.clients == 0 and self.state == XenbusState.RECONFIGURING:
            return self._reinitialise()
        return []

    def closing(self) -> None:
        self.state = XenbusState.CLOSING

    def closed(self) -> None:
        self.state = XenbusState.CLOSED

    def _publish(self) -> list[Step]:
        self.state = XenbusState.INITIALISED
        return [Step.PUBLISH]

    def _lose(self) -> list[Step]:
        self.state = XenbusState.RECONFIGURING
        if self.clients:
            return [Step.RECONFIGURE]
        return [Step.RECONFIGURE, *self._reinitialise()]

    def _reinitialise(self) -> list[Step]:
        self.state = XenbusState.INITIALISING
        if self.backend == XenbusState.INIT_WAIT:
            return [Step.REINITIALISE, *self._publish()]
        return [Step.REINITIALISE]
