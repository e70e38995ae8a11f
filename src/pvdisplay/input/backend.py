"""The kbdif backend core (sans-IO): output events in, in-ring slots out.

One `InputDevice` serves one connected vkbd frontend. It turns what outputs send
(`pvdisplay.planes.input_events`, in connector pixels) into kbdif in-events for what the
device offers and the frontend asked for, and produces them onto the page's in ring.

Ring discipline, as the display backend's: the backend never waits for a guest.
Events that do not fit on the ring wait in a backlog of `BACKLOG` events; when the
backlog overflows, `backlog.Backlog.shed` gives up the events whose loss the guest
notices least (never a release of a held key or an MT UP) and counts them in
`dropped`. The guest's
`in_cons` is read once per flush and must lie within a ring of `in_prod`, and kbdif
defines no out-event, so an out ring that is not empty is a protocol violation: both
raise `ProtocolError`, after which the device must not be used again.
"""

import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pvdisplay.input.backlog import FIRST_BUTTON, Backlog
from pvdisplay.planes import input_events as ev
from pvdisplay.planes.contacts import ContactSlots
from pvdisplay.wire import kbdif
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.layout import WritableBuffer

BACKLOG = kbdif.IN_RING_LEN
RAW_POINTER_MAX = 0x7FFF
"""kbdif.h: raw (unscaled) absolute pointer positions span [0, 0x7fff] on both axes."""
_U32 = 0xFFFFFFFF
_I32_MAX = 0x7FFFFFFF


@dataclass(frozen=True)
class VkbdFeatures:
    """What the backend directory says the device offers (written by the toolstack).

    `width` x `height` is the absolute pointer's range, `mt_width` x `mt_height` the
    touch surface's, both in the units the frontend sees; `raw_pointer` offers absolute
    positions over 0..`RAW_POINTER_MAX` instead of the pointer's range.
    """

    unique_id: str
    width: int
    height: int
    keyboard: bool = True
    pointer: bool = True
    abs_pointer: bool = False
    raw_pointer: bool = False
    multi_touch: bool = False
    mt_width: int = 0
    mt_height: int = 0
    mt_contacts: int = 0


@dataclass(frozen=True)
class FrontendRequests:
    """What the frontend asked for in its own directory (`request-*`)."""

    abs_pointer: bool = False
    multi_touch: bool = False
    raw_pointer: bool = False


def _scale(value: int, source: int, target: int) -> int:
    """`value` in [0, source) mapped onto [0, target), clamped."""
    if target <= 0:
        return 0
    if source > 0 and source != target:
        value = value * target // source
    return min(max(value, 0), target - 1)


def _raw(value: int, source: int) -> int:
    """`value` in [0, source) mapped onto [0, RAW_POINTER_MAX], edge to edge, clamped."""
    if source <= 1:
        return 0
    value = min(max(value, 0), source - 1)
    return value * RAW_POINTER_MAX // (source - 1)


class InputDevice:
    """One connected vkbd device: translation state, in-ring producer and backlog."""

    def __init__(
        self,
        config: VkbdFeatures,
        requests: FrontendRequests,
        page: WritableBuffer,
        backlog: int = BACKLOG,
    ):
        self.config = config
        self.absolute = config.abs_pointer and requests.abs_pointer
        # kbdif.h: raw is only valid with request-abs-pointer (and ignored without).
        self.raw = self.absolute and config.raw_pointer and requests.raw_pointer
        self.touch = config.multi_touch and requests.multi_touch and config.mt_contacts > 0
        self.dropped = 0
        """Events lost because the guest did not consume them in time (`Backlog.shed`)."""
        self.ignored = 0
        """Output events the device cannot express (touch without multi-touch, ...)."""
        self._page = page
        self._indices = kbdif.page_indices(page)
        self._prod = self._indices.load(kbdif.IN_PROD_OFFSET)
        self._backlog = Backlog()
        self._backlog_limit = backlog
        self._pointer = (0, 0)
        self._contacts: ContactSlots[int] = ContactSlots(config.mt_contacts)

    # -- translation --------------------------------------------------------------

    def translate(
        self, events: Iterable[ev.InputEvent], connector_width: int, connector_height: int
    ) -> list[kbdif.InEvent]:
        """kbdif events for `events` given in a `connector_width` x `connector_height` space.

        A run of touch events ends with one MT SYN, so contacts that change together
        reach the guest as one frame.
        """
        out: list[kbdif.InEvent] = []
        last_contact: int | None = None
        for event in events:
            if isinstance(event, ev.TouchDown | ev.TouchMove | ev.TouchUp):
                for touch in self._translate_touch(event, connector_width, connector_height):
                    out.append(touch)
                    last_contact = touch.contact_id
                continue
            if last_contact is not None:
                out.append(kbdif.MtSyn(last_contact))
                last_contact = None
            out.extend(self._translate_other(event, connector_width, connector_height))
        if last_contact is not None:
            out.append(kbdif.MtSyn(last_contact))
        return out

    def _translate_other(self, event: ev.InputEvent, cw: int, ch: int) -> list[kbdif.InEvent]:
        cfg = self.config
        match event:
            case ev.Key(code, pressed):
                allowed = cfg.pointer if code >= FIRST_BUTTON else cfg.keyboard
                if allowed and 0 <= code <= _U32:
                    return [kbdif.Key(pressed, code)]
            case ev.PointerMove(x, y) if cfg.pointer:
                position = (
                    (_raw(x, cw), _raw(y, ch))
                    if self.raw
                    else (_scale(x, cw, cfg.width), _scale(y, ch, cfg.height))
                )
                previous, self._pointer = self._pointer, position
                if self.absolute:
                    return [kbdif.Position(*position, 0)]
                return [kbdif.Motion(position[0] - previous[0], position[1] - previous[1], 0)]
            case ev.Wheel(steps) if cfg.pointer and steps:
                # kbdif's rel_z grows towards the user (xen-kbdfront reports -rel_z as REL_WHEEL);
                # -steps of the most negative 32-bit step count does not fit rel_z.
                rel_z = min(-steps, _I32_MAX)
                if self.absolute:
                    return [kbdif.Position(*self._pointer, rel_z)]
                return [kbdif.Motion(0, 0, rel_z)]
        self.ignored += 1
        return []

    def _translate_touch(
        self, event: ev.TouchDown | ev.TouchMove | ev.TouchUp, cw: int, ch: int
    ) -> list[kbdif.MtEvent]:
        if not self.touch:
            self.ignored += 1
            return []
        cfg = self.config
        if isinstance(event, ev.TouchUp):
            lifted = self._contacts.lift(event.contact)
            if lifted is None:
                self.ignored += 1
                return []
            return [kbdif.MtUp(lifted)]
        x, y = _scale(event.x, cw, cfg.mt_width), _scale(event.y, ch, cfg.mt_height)
        held = self._contacts.slot(event.contact)
        if held is not None:
            return [kbdif.MtMotion(held, x, y)]
        taken = None if isinstance(event, ev.TouchMove) else self._contacts.touch(event.contact)
        if taken is None:
            self.ignored += 1
            return []
        return [kbdif.MtDown(taken, x, y)]

    # -- the ring -----------------------------------------------------------------

    def release(self) -> None:
        """Let go of the page so its mapping can be closed; the device is unusable after."""
        self._indices.release()

    def push(self, events: Sequence[kbdif.InEvent]) -> bool:
        """Queue `events` and put what fits on the ring; True if the frontend must be notified."""
        self._backlog.extend(events)
        produced = self.flush()
        self.dropped += self._backlog.shed(self._backlog_limit)
        return produced

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def flush(self) -> bool:
        """Move backlog onto the ring as far as the guest's `in_cons` allows.

        Returns True when anything was produced (notify the frontend). Raises
        `ProtocolError` if the guest published impossible indices or an out event.
        """
        self.check_out_ring()
        # Acquire: no slot below is overwritten before the guest is done reading it.
        in_cons = self._indices.load(kbdif.IN_CONS_OFFSET)
        used = (self._prod - in_cons) & _U32
        if used > kbdif.IN_RING_LEN:
            raise ProtocolError(
                errno.EPROTO, f"in_cons {in_cons} is {used} slots behind in_prod {self._prod}"
            )
        free = kbdif.IN_RING_LEN - used
        produced = 0
        while produced < free and self._backlog:
            kbdif.write_in_event(self._page, self._prod, self._backlog.popleft())
            self._prod = (self._prod + 1) & _U32
            produced += 1
        if produced:
            # Release: the guest sees the events in their slots before in_prod covers them.
            self._indices.store(kbdif.IN_PROD_OFFSET, self._prod)
        return produced > 0

    def check_out_ring(self) -> None:
        out_cons = self._indices.load(kbdif.OUT_CONS_OFFSET)
        out_prod = self._indices.load(kbdif.OUT_PROD_OFFSET)
        if out_prod != out_cons:
            pending = (out_prod - out_cons) & _U32
            raise ProtocolError(
                errno.EPROTO,
                f"frontend produced {pending} out events (out_prod {out_prod}, "
                f"out_cons {out_cons}); kbdif defines none",
            )
