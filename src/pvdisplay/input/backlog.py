"""The in-events waiting for ring space, and what to lose when there are too many (sans-IO).

A guest that stops reading must not make the backend buffer without bound, but losing
the wrong event is worse than losing many: a dropped key release or MT UP leaves a key
or a finger held in the guest until something else lets go of it. So when the backlog
is over its limit, `Backlog.shed` gives up events in this order, oldest first within
each step, and stops as soon as the backlog fits:

1. key releases the guest would ignore (of keys known to be up at that point);
2. pointer motion merged into the next pointer event of the same kind when no button
   changes between them (deltas and wheel steps add up; a position keeps the newer);
3. the same across button changes (a click lands where the pointer went next, but the
   pointer still ends where the host left it);
4. whole touch frames merged into the next complete frame, so the guest sees the state
   the two frames end in at the second SYN (a contact that came and went between them
   is never seen; a lifted one always is);
5. key presses, each with its release if the key was known to be up before it.

Key releases of keys that may be held, MT UPs of contacts the guest has seen, the newest
complete touch frame and the newest pointer event of each kind are never lost, so a
backlog of nothing else may stay over its limit (bounded by the keys and contacts held).
"""

from collections import deque
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import pairwise

from pvdisplay.wire import kbdif

FIRST_BUTTON = 0x100
"""BTN_MISC: key codes below are keyboard keys, codes from here pointer buttons."""

_S32 = range(-(2**31), 2**31)

_MT_TYPES = (
    kbdif.MtDown,
    kbdif.MtUp,
    kbdif.MtMotion,
    kbdif.MtSyn,
    kbdif.MtShape,
    kbdif.MtOrient,
)


class Backlog:
    """In-events in the order the guest will get them, from the oldest."""

    def __init__(self) -> None:
        self._events: deque[kbdif.InEvent] = deque()
        self._keys: dict[int, bool] = {}
        """Each key's state in the guest once it has read every event taken so far (keys
        never sent are missing: the guest may hold them from an earlier connection)."""

    def __len__(self) -> int:
        return len(self._events)

    def extend(self, events: Iterable[kbdif.InEvent]) -> None:
        self._events.extend(events)

    def popleft(self) -> kbdif.InEvent:
        """The oldest event, now the guest's."""
        event = self._events.popleft()
        if isinstance(event, kbdif.Key):
            self._keys[event.keycode] = event.pressed
        return event

    def shed(self, limit: int) -> int:
        """Give up events (see the module) until at most `limit` wait; how many went."""
        before = len(self._events)
        if before <= limit:
            return 0
        events = list(self._events)
        for step in (
            partial(_drop_keys, keys=self._keys, presses=False),
            partial(_merge_pointer, across_buttons=False),
            partial(_merge_pointer, across_buttons=True),
            _merge_touch_frames,
            partial(_drop_keys, keys=self._keys, presses=True),
        ):
            if len(events) <= limit:
                break
            events = step(events, limit)
        self._events = deque(events)
        return before - len(events)


def _drop_keys(
    events: list[kbdif.InEvent], limit: int, keys: dict[int, bool], presses: bool
) -> list[kbdif.InEvent]:
    """Without releases of keys known to be up at that point (and, with `presses`,
    without the oldest presses until the events fit)."""
    state = dict(keys)
    kept: list[kbdif.InEvent] = []
    excess = len(events) - limit
    for event in events:
        if isinstance(event, kbdif.Key):
            if event.pressed and presses and excess > 0:
                excess -= 1
                continue
            if not event.pressed and state.get(event.keycode) is False:
                excess -= 1
                continue
            state[event.keycode] = event.pressed
        kept.append(event)
    return kept


def _merge_pointer(
    events: list[kbdif.InEvent], limit: int, across_buttons: bool
) -> list[kbdif.InEvent]:
    """Pointer events merged into the next one of the same kind, oldest first, while there
    are too many; across button changes only if told."""
    merged: list[kbdif.InEvent | None] = list(events)
    excess = len(events) - limit
    last: int | None = None  # the newest pointer event since the last button change
    for index, event in enumerate(events):
        if excess <= 0:
            break
        if isinstance(event, kbdif.Key) and event.keycode >= FIRST_BUTTON and not across_buttons:
            last = None
            continue
        if not isinstance(event, kbdif.Motion | kbdif.Position):
            continue
        if last is not None:
            combined = _combine(merged[last], event)
            if combined is not None:
                merged[last], merged[index] = None, combined
                excess -= 1
        last = index
    return [event for event in merged if event is not None]


def _combine(earlier: kbdif.InEvent | None, later: kbdif.InEvent) -> kbdif.InEvent | None:
    """One pointer event that moves as `earlier` then `later` do; None if there is none."""
    match earlier, later:
        case kbdif.Motion(), kbdif.Motion():
            x, y = earlier.rel_x + later.rel_x, earlier.rel_y + later.rel_y
            z = earlier.rel_z + later.rel_z
            return kbdif.Motion(x, y, z) if x in _S32 and y in _S32 and z in _S32 else None
        case kbdif.Position(), kbdif.Position():
            z = earlier.rel_z + later.rel_z
            return kbdif.Position(later.abs_x, later.abs_y, z) if z in _S32 else None
    return None


def _merge_touch_frames(events: list[kbdif.InEvent], limit: int) -> list[kbdif.InEvent]:
    """The oldest complete touch frames merged into the next complete one while there are
    too many events; the merged frame goes where the later one's SYN was."""
    slots: list[list[kbdif.InEvent]] = [[event] for event in events]
    frames = list(_frames(events))
    length = len(events)
    for first, second in pairwise(frames):
        if length <= limit:
            break
        # `first` may be a frame that earlier merges left at its SYN's slot.
        sub_events: list[kbdif.InEvent] = [
            e for i in first for e in slots[i] if not isinstance(e, kbdif.MtSyn)
        ]
        sub_events += [events[i] for i in second[:-1]]
        combined = [*_touch_state(sub_events), events[second[-1]]]
        length -= sum(len(slots[i]) for i in (*first, *second)) - len(combined)
        for i in (*first, *second):
            slots[i] = []
        slots[second[-1]] = combined
    return [event for slot in slots for event in slot]


def _frames(events: list[kbdif.InEvent]) -> Iterator[list[int]]:
    """The indices of each complete touch frame's events, SYN last, oldest first."""
    frame: list[int] = []
    for index, event in enumerate(events):
        if isinstance(event, _MT_TYPES):
            frame.append(index)
            if isinstance(event, kbdif.MtSyn):
                yield frame
                frame = []


def _touch_state(events: Iterable[kbdif.InEvent]) -> list[kbdif.InEvent]:
    """Sub-events (no SYN) that leave every contact as `events` do, one frame's worth:
    per contact an UP if it was lifted (and held before), then where it is now (DOWN if
    it came down in `events`, else MOTION), then its newest shape and orientation."""
    lifted: dict[int, bool] = {}
    at: dict[int, kbdif.MtDown | kbdif.MtMotion | None] = {}
    looks: dict[int, dict[type, kbdif.InEvent]] = {}
    for event in events:
        if not isinstance(event, _MT_TYPES) or isinstance(event, kbdif.MtSyn):
            continue
        contact = event.contact_id
        lifted.setdefault(contact, False)
        current = at.get(contact)
        match event:
            case kbdif.MtDown():
                at[contact] = event
            case kbdif.MtMotion(abs_x=x, abs_y=y) if isinstance(current, kbdif.MtDown):
                at[contact] = kbdif.MtDown(contact, x, y)
            case kbdif.MtMotion():
                at[contact] = event
            case kbdif.MtUp():
                if not isinstance(current, kbdif.MtDown):
                    lifted[contact] = True  # held before these events: the guest must see it go
                at[contact] = None
                looks.pop(contact, None)
            case _:
                looks.setdefault(contact, {})[type(event)] = event
    state: list[kbdif.InEvent] = []
    for contact, was_lifted in lifted.items():
        position = at.get(contact)
        if was_lifted:
            state.append(kbdif.MtUp(contact))
        if position is not None:
            state.append(position)
        if position is not None or not was_lifted:
            state.extend(looks.get(contact, {}).values())
    return state
