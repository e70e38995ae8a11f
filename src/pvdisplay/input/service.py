"""The kbdif backend as a service: XenStore, XenBus states, the shared page, its event channel.

Runs inside the display backend's domain process, on its loop (`display.service` starts
it and hands it the event-channel ports that are not the display's). It watches
`/local/domain/<own domid>/backend/vkbd` and serves every device with a
`back.InputDevice`. `deliver` is the planes socket's "input" op: it routes an output's
events for a connector to the connected vkbd of the same domain whose `unique-id` is
the connector's (or, failing that, the domain's vkbd without a `unique-id`).

XenBus states (backend side), per device, as the display backend's:

- found, or frontend Closed/gone: tear down; write `width`/`height` if the toolstack did
  not (from the bound connector's resolution); state InitWait;
- frontend Initialised while InitWait: read `page-gref`, `event-channel` and the
  `request-*` nodes from the frontend directory, map, bind, Connected;
- frontend Closing: tear down, Closing; frontend domain dead or channel unbound: InitWait;
- frontend misbehaves (impossible `in_cons`, any out event, unusable transport):
  tear down, Closing, and never read its page again.
"""

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from pvdisplay import logs, xenbus
from pvdisplay.hv import Hypervisor, HypervisorError, Mapping, PortState
from pvdisplay.input import events as ev
from pvdisplay.input.back import DeviceConfig, FrontendRequests, InputDevice
from pvdisplay.planes import InputReceipt, PlaneKey, PlaneRegistry
from pvdisplay.store.aio import AsyncClient, AsyncWatch
from pvdisplay.wire import displif, kbdif
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.xenbus import XenbusState

log = logging.getLogger(__name__)

DEFAULT_WIDTH, DEFAULT_HEIGHT = 800, 600
"""The pointer range of a vkbd bound to no connector (xenfb's default mode)."""
_STARTING_OVER = frozenset(
    {XenbusState.CLOSED, XenbusState.UNKNOWN, XenbusState.INITIALISING, XenbusState.RECONFIGURING}
)


@dataclass
class _Vkbd:
    frontend: int
    devid: int
    backend_path: str
    frontend_path: str = ""
    config: DeviceConfig | None = None
    state: XenbusState = XenbusState.UNKNOWN
    core: InputDevice | None = None
    mapping: Mapping | None = None
    page: memoryview | None = None
    port: int | None = None
    watcher: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"vkbd {self.frontend}/{self.devid}"


class InputService:
    """All vkbd devices this backend domain serves."""

    def __init__(self, hv: Hypervisor, xs: AsyncClient, planes: PlaneRegistry) -> None:
        self._hv = hv
        self._xs = xs
        self._planes = planes
        self._root = f"/local/domain/{hv.domid}/backend/{kbdif.DRIVER_NAME}"
        self._devices: dict[tuple[int, int], _Vkbd] = {}
        self._ports: dict[int, _Vkbd] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        root_watch = await self._xs.watch(self._root)
        release_watch = await self._xs.watch("@releaseDomain")
        self._tasks += [
            asyncio.create_task(self._follow(root_watch, self._rescan)),
            asyncio.create_task(self._follow(release_watch, self._check_frontends)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for device in list(self._devices.values()):
            if device.watcher is not None:
                device.watcher.cancel()
            self._teardown(device)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "frontend": d.frontend,
                "devid": d.devid,
                "state": int(d.state),
                "dropped": d.core.dropped if d.core else 0,
                "backlog": d.core.backlog if d.core else 0,
            }
            for d in self._devices.values()
        ]

    # -- the planes socket's "input" op ------------------------------------------------

    def deliver(self, key: PlaneKey, events: Sequence[ev.InputEvent]) -> InputReceipt:
        plane = self._planes.get(key)
        if plane is None:
            raise ProtocolError(errno.ENOENT, f"no connector {key}")
        device = self._bound_device(key.domid, plane.info.unique_id)
        if device is None or device.core is None:
            raise ProtocolError(errno.ENOENT, f"no connected vkbd bound to connector {key}")
        core = device.core
        translated = core.translate(events, plane.info.mode_width, plane.info.mode_height)
        dropped_before = core.dropped
        try:
            if core.push(translated):
                self._notify(device)
        except ProtocolError as exc:
            self._misbehaved(device, exc)
            raise ProtocolError(errno.ENOENT, f"{device.name} was disconnected") from exc
        if core.dropped > dropped_before:
            log.warning(
                "input ring full; oldest events dropped",
                extra=logs.fields(device=device.name, dropped=core.dropped),
            )
        return InputReceipt(len(translated), core.dropped)

    def _bound_device(self, domid: int, unique_id: str) -> _Vkbd | None:
        candidates = [
            d for key, d in sorted(self._devices.items()) if key[0] == domid and d.core is not None
        ]
        for wanted in (unique_id, ""):
            for device in candidates:
                if device.config is not None and device.config.unique_id == wanted:
                    return device
        return None

    # -- event channels ----------------------------------------------------------------

    def on_port(self, port: int) -> None:
        """A port fired that the display backend does not own."""
        device = self._ports.get(port)
        if device is None or device.core is None:
            return
        if self._hv.events.status(port).state == PortState.UNBOUND:
            log.info("frontend channel closed", extra=logs.fields(device=device.name))
            self._teardown(device)
            self._spawn(self._set_state(device, XenbusState.INIT_WAIT))
            return
        try:
            if device.core.flush():
                self._notify(device)
        except ProtocolError as exc:
            self._misbehaved(device, exc)

    def _notify(self, device: _Vkbd) -> None:
        if device.port is not None:
            self._hv.events.notify(device.port)

    def _misbehaved(self, device: _Vkbd, exc: ProtocolError) -> None:
        log.warning(
            "frontend broke the input ring protocol; disconnecting",
            extra=logs.fields(device=device.name, reason=exc),
        )
        self._teardown(device)
        self._spawn(self._set_state(device, XenbusState.CLOSING))

    # -- XenStore ----------------------------------------------------------------------

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
            found: set[tuple[int, int]] = set()
            for fe_name in await self._ls(self._root):
                for dev_name in await self._ls(f"{self._root}/{fe_name}"):
                    if fe_name.isdigit() and dev_name.isdigit():
                        found.add((int(fe_name), int(dev_name)))
            for key in sorted(found - self._devices.keys()):
                device = _Vkbd(*key, backend_path=f"{self._root}/{key[0]}/{key[1]}")
                self._devices[key] = device
                device.watcher = asyncio.create_task(self._watch_device(device))
            for key in self._devices.keys() - found:
                device = self._devices.pop(key)
                if device.watcher is not None:
                    device.watcher.cancel()
                self._teardown(device)

    async def _ls(self, path: str) -> list[str]:
        try:
            return await self._xs.ls(path)
        except FileNotFoundError:
            return []

    async def _check_frontends(self) -> None:
        for device in list(self._devices.values()):
            if device.core is not None and not await self._xs.is_domain_introduced(device.frontend):
                self._teardown(device)
                await self._set_state(device, XenbusState.INIT_WAIT)

    async def _watch_device(self, device: _Vkbd) -> None:
        try:
            device.frontend_path = await self._read(
                f"{device.backend_path}/{xenbus.FIELD_FRONTEND}"
            ) or xenbus.frontend_path(device.frontend, kbdif.DRIVER_NAME, device.devid)
            device.config = await self._read_config(device)
            await self._set_state(device, XenbusState.INIT_WAIT)
            async with await self._xs.watch(device.frontend_path) as watch:
                async for _ in watch:
                    await self._frontend_changed(device)
        except FileNotFoundError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("device watcher failed", extra=logs.fields(device=device.name))

    async def _read_config(self, device: _Vkbd) -> DeviceConfig:
        """The toolstack's settings; writes `width`/`height` first if it did not."""
        back = device.backend_path

        async def flag(field: str) -> bool:
            return await self._read(f"{back}/{field}") == "1"

        async def number(field: str) -> int:
            text = await self._read(f"{back}/{field}") or ""
            return int(text) if text.isdigit() and len(text) < 10 else 0

        unique_id = await self._read(f"{back}/{kbdif.FIELD_UNIQUE_ID}") or ""
        width, height = await number(kbdif.FIELD_WIDTH), await number(kbdif.FIELD_HEIGHT)
        if not width or not height:
            width, height = await self._connector_resolution(device.frontend, unique_id)
            await self._xs.write(f"{back}/{kbdif.FIELD_WIDTH}", str(width))
            await self._xs.write(f"{back}/{kbdif.FIELD_HEIGHT}", str(height))
        return DeviceConfig(
            unique_id,
            width,
            height,
            keyboard=not await flag(kbdif.FIELD_FEAT_DSBL_KEYBRD),
            pointer=not await flag(kbdif.FIELD_FEAT_DSBL_POINTER),
            abs_pointer=await flag(kbdif.FIELD_FEAT_ABS_POINTER),
            multi_touch=await flag(kbdif.FIELD_FEAT_MTOUCH),
            mt_width=await number(kbdif.FIELD_MT_WIDTH) or width,
            mt_height=await number(kbdif.FIELD_MT_HEIGHT) or height,
            mt_contacts=min(await number(kbdif.FIELD_MT_NUM_CONTACTS), 256),
        )

    async def _connector_resolution(self, domid: int, unique_id: str) -> tuple[int, int]:
        """The resolution of the guest's vdispl connector `unique_id` (else its first one)."""
        devices = f"/local/domain/{domid}/device/{displif.DRIVER_NAME}"
        found: list[tuple[int, int]] = []
        for devid in sorted(await self._ls(devices)):
            for index in sorted(await self._ls(f"{devices}/{devid}"), key=lambda n: n.zfill(9)):
                base = f"{devices}/{devid}/{index}"
                resolution = await self._read(f"{base}/{displif.FIELD_RESOLUTION}")
                if resolution is None:
                    continue
                try:
                    size = displif.parse_resolution(resolution)
                except ProtocolError:
                    continue
                if await self._read(f"{base}/{displif.FIELD_UNIQUE_ID}") == unique_id:
                    return size
                found.append(size)
        return found[0] if found else (DEFAULT_WIDTH, DEFAULT_HEIGHT)

    async def _frontend_changed(self, device: _Vkbd) -> None:
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
            target = XenbusState.INIT_WAIT
        else:
            return
        if device.state != target:
            self._teardown(device)
            await self._set_state(device, target)

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

    async def _set_state(self, device: _Vkbd, state: XenbusState) -> None:
        device.state = state
        try:
            await self._xs.write(f"{device.backend_path}/{xenbus.FIELD_STATE}", state.encode())
        except FileNotFoundError:
            return
        log.info("backend state", extra=logs.fields(device=device.name, state=state.name))

    async def _connect(self, device: _Vkbd) -> None:
        front = device.frontend_path
        assert device.config is not None
        try:
            ref = await self._read_u32(f"{front}/{kbdif.FIELD_RING_GREF}")
            remote_port = await self._read_u32(f"{front}/{kbdif.FIELD_EVT_CHANNEL}")
            requests = FrontendRequests(
                abs_pointer=await self._read(f"{front}/{kbdif.FIELD_REQ_ABS_POINTER}") == "1",
                multi_touch=await self._read(f"{front}/{kbdif.FIELD_REQ_MTOUCH}") == "1",
            )
            device.mapping = self._hv.grants.map(device.frontend, [ref])
            device.page = device.mapping.view()
            device.port = self._hv.events.bind_interdomain(device.frontend, remote_port)
            device.core = InputDevice(device.config, requests, device.page)
            device.core.check_out_ring()
        except (ProtocolError, HypervisorError) as exc:
            log.warning(
                "cannot connect frontend", extra=logs.fields(device=device.name, reason=exc)
            )
            self._teardown(device)
            await self._set_state(device, XenbusState.CLOSING)
            return
        self._ports[device.port] = device
        await self._set_state(device, XenbusState.CONNECTED)
        log.info(
            "input connected",
            extra=logs.fields(
                device=device.name, absolute=device.core.absolute, touch=device.core.touch
            ),
        )

    def _teardown(self, device: _Vkbd) -> None:
        if device.port is not None:
            self._ports.pop(device.port, None)
            with contextlib.suppress(HypervisorError):
                self._hv.events.unbind(device.port)
            device.port = None
        device.core = None
        if device.page is not None:
            device.page.release()
            device.page = None
        if device.mapping is not None:
            with contextlib.suppress(HypervisorError):
                device.mapping.close()
            device.mapping = None

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
