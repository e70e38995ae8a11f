"""The XenBus half every backend service shares: finding its devices and following them.

`BackendDevices` watches `/local/domain/<own domid>/backend/<kind>`, keeps one device
per `<frontend>/<devid>` directory the toolstack creates there (and forgets those it
removes), follows each frontend's `state` node and writes the backend's own. The
display (vdispl) and input (vkbd) services subclass it and say what a device holds,
what the backend publishes before it waits (`_prepare`), how it connects and how it
tears down.

XenBus states (backend side), per device:

- found: read the `frontend` node (else the default path), `_prepare`, InitWait;
- frontend Initialised while InitWait (and not connected): `_connect`;
- frontend Closing: tear down, Closing;
- frontend Closed, gone, Unknown, Initialising or Reconfiguring: tear down, InitWait (or
  Closed once the toolstack has written `online` = 0: libxl waits for it to remove the
  device);
- frontend domain released (@releaseDomain) while connected: tear down, as above.

A frontend `state` that is not a XenbusState counts as Unknown. Every XenStore path
that vanishes under the service (the toolstack removing a device) is quietly skipped.
"""

import abc
import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pvdisplay import logs, xenbus
from pvdisplay.store.aio import AsyncClient, AsyncWatch
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.xenbus import XenbusState

log = logging.getLogger(__name__)
guest_log = logs.PeerLog(log)
"""Lines a guest's state changes make us write, limited per guest (domid)."""

# Frontend states after which the backend gives everything back and waits in InitWait:
# gone, or starting over.
_STARTING_OVER = frozenset(
    {XenbusState.CLOSED, XenbusState.UNKNOWN, XenbusState.INITIALISING, XenbusState.RECONFIGURING}
)


CoreT = TypeVar("CoreT")


@dataclass
class BackendDevice(Generic[CoreT]):
    """One frontend device as its backend tracks it; subclasses add what it holds.

    `core` is the device's protocol state machine, present while connected (from
    `_connect` until `_teardown`).
    """

    frontend: int
    devid: int
    backend_path: str
    frontend_path: str = ""
    state: XenbusState = XenbusState.UNKNOWN
    core: CoreT | None = None
    watcher: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"{self.frontend}/{self.devid}"


DeviceT = TypeVar("DeviceT", bound=BackendDevice[Any])


class BackendDevices(abc.ABC, Generic[DeviceT]):
    """All devices of one `kind` (vdispl, vkbd) the backend domain `domid` serves."""

    def __init__(
        self, xs: AsyncClient, domid: int, kind: str, backend_kinds: tuple[str, ...]
    ) -> None:
        """`kind` is the frontend's device kind; the toolstack puts its backends under
        any of `backend_kinds` (libxl: vkbd, or vinput for `backend-type=linux`)."""
        self._xs = xs
        self._kind = kind
        self._roots = tuple(f"/local/domain/{domid}/backend/{each}" for each in backend_kinds)
        # By (frontend, devid, backend directory): the same numbers may appear under two
        # backend kinds, and each is a device of its own.
        self._devices: dict[tuple[int, int, str], DeviceT] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    @abc.abstractmethod
    def _new_device(self, frontend: int, devid: int, backend_path: str) -> DeviceT:
        """A device the toolstack just created, not yet set up."""

    @abc.abstractmethod
    async def _prepare(self, device: DeviceT) -> None:
        """What the backend reads and publishes before its first InitWait."""

    @abc.abstractmethod
    async def _connect(self, device: DeviceT) -> None:
        """The frontend is Initialised: map its transport and go Connected (or Closing)."""

    @abc.abstractmethod
    def _teardown(self, device: DeviceT) -> None:
        """Give back everything the device holds from its frontend; safe to repeat."""

    @abc.abstractmethod
    def _usage(self, device: DeviceT) -> dict[str, object]:
        """The device's counters for `status` (zeros while not connected)."""

    def status(self) -> list[dict[str, object]]:
        """Each device's state and usage, for the host's supervision and tests."""
        return [
            {"frontend": d.frontend, "devid": d.devid, "state": int(d.state), **self._usage(d)}
            for d in self._devices.values()
        ]

    async def start(self) -> None:
        for root in self._roots:
            root_watch = await self._xs.watch(root)
            self._tasks.append(asyncio.create_task(self._follow(root_watch, self._rescan)))
        release_watch = await self._xs.watch("@releaseDomain")
        self._tasks.append(asyncio.create_task(self._follow(release_watch, self._check_frontends)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for device in list(self._devices.values()):
            if device.watcher is not None:
                device.watcher.cancel()
            self._teardown(device)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, watch: AsyncWatch, react: Callable[[], Awaitable[None]]) -> None:
        async for _ in watch:
            try:
                await react()
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("reacting to a XenStore change failed")

    async def _rescan(self) -> None:
        async with self._lock:
            found: set[tuple[int, int, str]] = set()
            for root in self._roots:
                for fe_name in await self._ls(root):
                    for dev_name in await self._ls(f"{root}/{fe_name}"):
                        if fe_name.isdigit() and dev_name.isdigit():
                            found.add((int(fe_name), int(dev_name), root))
            for key in sorted(found - self._devices.keys()):
                frontend, devid, root = key
                device = self._new_device(frontend, devid, f"{root}/{frontend}/{devid}")
                self._devices[key] = device
                device.watcher = asyncio.create_task(self._watch_device(device))
            for key in self._devices.keys() - found:
                device = self._devices.pop(key)
                if device.watcher is not None:
                    device.watcher.cancel()
                self._teardown(device)
                guest_log.info(device.frontend, "device removed", device=device.name)

    async def _check_frontends(self) -> None:
        for device in list(self._devices.values()):
            if device.core is not None and not await self._xs.is_domain_introduced(device.frontend):
                guest_log.info(device.frontend, "frontend domain gone", device=device.name)
                self._teardown(device)
                await self._set_state(device, await self._idle_state(device))

    async def _watch_device(self, device: DeviceT) -> None:
        try:
            device.frontend_path = await self._read(
                f"{device.backend_path}/{xenbus.FIELD_FRONTEND}"
            ) or xenbus.frontend_path(device.frontend, self._kind, device.devid)
            await self._prepare(device)
            await self._set_state(device, XenbusState.INIT_WAIT)
            async with await self._xs.watch(device.frontend_path) as watch:
                async for _ in watch:
                    await self._frontend_changed(device)
        except FileNotFoundError:
            pass  # the toolstack removed the device while we set it up
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("device watcher failed", extra=logs.fields(device=device.name))

    async def _frontend_changed(self, device: DeviceT) -> None:
        text = await self._read(f"{device.frontend_path}/{xenbus.FIELD_STATE}")
        try:
            fe_state = xenbus.parse_state(text) if text is not None else XenbusState.CLOSED
        except ProtocolError:
            fe_state = XenbusState.UNKNOWN
        if fe_state == XenbusState.INITIALISED:
            if device.core is None and device.state == XenbusState.INIT_WAIT:
                await self._connect(device)
            return
        if fe_state == XenbusState.CLOSING:
            target = XenbusState.CLOSING
        elif fe_state in _STARTING_OVER:
            target = await self._idle_state(device)
        else:
            return
        if device.state != target:
            self._teardown(device)
            await self._set_state(device, target)

    async def _idle_state(self, device: DeviceT) -> XenbusState:
        """Where a device goes once its frontend is gone or closed: InitWait for the next
        frontend, or Closed when the toolstack has taken it offline (`online` = 0), which
        is what libxl waits for before it removes the device (`xl destroy`, detach)."""
        online = await self._read(f"{device.backend_path}/{xenbus.FIELD_ONLINE}")
        return XenbusState.CLOSED if online == "0" else XenbusState.INIT_WAIT

    async def _ls(self, path: str) -> list[str]:
        try:
            return await self._xs.ls(path)
        except FileNotFoundError:
            return []

    async def _read(self, path: str) -> str | None:
        try:
            return (await self._xs.read(path)).decode("utf-8", "replace")
        except FileNotFoundError:
            return None

    async def _read_u32(self, path: str) -> int:
        text = await self._read(path)
        if text is None or not text.isdigit() or int(text) > 0xFFFFFFFF:
            raise ProtocolError(errno.EINVAL, f"{path} = {text!r} is not a uint32")
        return int(text)

    async def _set_state(self, device: DeviceT, state: XenbusState) -> None:
        device.state = state
        try:
            await self._xs.write(f"{device.backend_path}/{xenbus.FIELD_STATE}", state.encode())
        except FileNotFoundError:
            return
        guest_log.info(device.frontend, "backend state", device=device.name, state=state.name)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
