"""One asyncio reader of a domain's event channels, shared by every device in the process."""

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from typing import ClassVar

from pvdisplay.hv import Hypervisor, HypervisorError


class PortReader:
    """The one reader of a domain's event channels on the running loop.

    A domain has one event-channel device (`hv.events`), shared by every frontend in the
    process (each `Display`, each `input.front.Keyboard`). `add(hv, port, callback)`
    routes notifications of `port` to `callback(port)`, called on the loop; `remove`
    stops that. The reader is installed with the first port and removed with the last.
    Pending notifications of ports nobody added are consumed and dropped.
    """

    # Weakly keyed: a closed hypervisor's reader goes with it, and a new one never
    # inherits it by reusing its id().
    _readers: ClassVar["weakref.WeakKeyDictionary[Hypervisor, PortReader]"] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, hv: Hypervisor) -> None:
        self._hv = hv
        self._callbacks: dict[int, Callable[[int], None]] = {}
        asyncio.get_running_loop().add_reader(hv.events.fileno(), self._ready)

    @classmethod
    def add(cls, hv: Hypervisor, port: int, callback: Callable[[int], None]) -> None:
        reader = cls._readers.get(hv)
        if reader is None:
            reader = cls._readers[hv] = cls(hv)
        reader._callbacks[port] = callback

    @classmethod
    def remove(cls, hv: Hypervisor, port: int) -> None:
        reader = cls._readers.get(hv)
        if reader is None:
            return
        reader._callbacks.pop(port, None)
        if not reader._callbacks:
            asyncio.get_running_loop().remove_reader(hv.events.fileno())
            del cls._readers[hv]

    @classmethod
    def unbind(cls, hv: Hypervisor, port: int) -> None:
        """`remove`, then close the port; one the hypervisor already dropped is fine."""
        cls.remove(hv, port)
        with contextlib.suppress(HypervisorError):
            hv.events.unbind(port)

    def _ready(self) -> None:
        for port in self._hv.events.pending(0):
            callback = self._callbacks.get(port)
            if callback is not None:
                callback(port)
