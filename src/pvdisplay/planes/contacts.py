"""Which contact slot each touching finger holds, as outputs number touches for the guest.

kbdif multi-touch numbers contacts 0, 1, ...; an output gives each finger that touches
the lowest slot no other finger holds, keeps it for that finger until it lifts, and
ignores fingers beyond the slots it has. Fingers are whatever identifies one to the
output (a browser pointerId, an SDL (touch, finger) pair).
"""

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Finger = TypeVar("Finger", bound=Hashable)


@dataclass
class ContactSlots(Generic[Finger]):
    """Contact slots 0..`count`-1 for the fingers touching now."""

    count: int
    _held: dict[Finger, int] = field(default_factory=dict, init=False)

    def touch(self, finger: Finger) -> int | None:
        """The slot `finger` takes as it touches; None if it already touches or every
        slot is held."""
        if finger in self._held:
            return None
        held = set(self._held.values())
        free = next((slot for slot in range(self.count) if slot not in held), None)
        if free is not None:
            self._held[finger] = free
        return free

    def slot(self, finger: Finger) -> int | None:
        """The slot `finger` holds; None if it is not touching."""
        return self._held.get(finger)

    def lift(self, finger: Finger) -> int | None:
        """The slot `finger` gives back as it lifts; None if it was not touching."""
        return self._held.pop(finger, None)

    def lift_all(self) -> list[int]:
        """Every slot held, lowest first; all are free afterwards."""
        slots = sorted(self._held.values())
        self._held.clear()
        return slots

    def copy(self) -> "ContactSlots[Finger]":
        """The same fingers in the same slots, changed independently of this one."""
        copied: ContactSlots[Finger] = ContactSlots(self.count)
        copied._held = dict(self._held)
        return copied
