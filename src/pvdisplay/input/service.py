"""The kbdif backend as a service: XenStore, XenBus states, the shared page, its event channel.

Runs inside the backend domain's process, on its loop (`backend_domain` starts it, and
the display service hands it the event-channel ports that are not the display's). It
watches `/local/domain/<own domid>/backend/vkbd` and `.../backend/vinput` (libxl's place
for `backend-type=linux`) and serves every device with an `input.backend.InputDevice`.
`deliver` is the planes socket's "input" op: it routes an output's events for a
connector to the connected vkbd of the same domain whose `unique-id` is the connector's
(or, failing that, the domain's vkbd without a `unique-id`).

XenBus states (backend side), per device, as the display backend's
(`backend_devices.BackendDevices`):

- found, or frontend Closed/gone: tear down; write `width`/`height` if the toolstack did
  not (from the bound connector's resolution); state InitWait;
- frontend Initialised while InitWait: read `page-gref`, `event-channel` and the
  `request-*` nodes (`abs-pointer`, `raw-pointer`, `multi-touch`) from the frontend
  directory, map, bind, Connected;
- frontend Closing: tear down, Closing; frontend domain dead or channel unbound: InitWait;
- frontend misbehaves (impossible `in_cons`, any out event, unusable transport):
  tear down, Closing, and never read its page again.
"""

import contextlib
import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pvdisplay import logs, xenbus
from pvdisplay.hv import Hypervisor, HypervisorError, Mapping, PortState
from pvdisplay.input.backend import FrontendRequests, InputDevice, VkbdFeatures
from pvdisplay.input.limits import DEFAULT_RESOLUTION
from pvdisplay.planes import input_events as ev
from pvdisplay.planes.input_events import InputReceipt
from pvdisplay.planes.model import PlaneKey, PlaneRegistry
from pvdisplay.store.aio import AsyncClient
from pvdisplay.wire import displif, kbdif
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.xenbus import XenbusState
from pvdisplay.xenbus.backend_devices import BackendDevice, BackendDevices

log = logging.getLogger(__name__)

guest_log = logs.PeerLog(log)
"""Lines a guest's doing makes us write, limited per guest (domid)."""


@dataclass
class _Vkbd(BackendDevice[InputDevice]):
    config: VkbdFeatures | None = None
    mapping: Mapping | None = None
    page: memoryview | None = None
    port: int | None = None

    @property
    def name(self) -> str:
        return f"vkbd {super().name}"


class InputService(BackendDevices[_Vkbd]):
    """All vkbd devices this backend domain serves."""

    def __init__(self, hv: Hypervisor, xs: AsyncClient, planes: PlaneRegistry) -> None:
        super().__init__(xs, hv.domid, kbdif.DRIVER_NAME, (kbdif.DRIVER_NAME, xenbus.VINPUT))
        self._hv = hv
        self._planes = planes
        self._ports: dict[int, _Vkbd] = {}

    def _usage(self, device: _Vkbd) -> dict[str, object]:
        core = device.core
        return {"dropped": core.dropped if core else 0, "backlog": core.backlog if core else 0}

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
            guest_log.warning(
                device.frontend,
                "input ring full; events dropped",
                device=device.name,
                dropped=core.dropped,
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
            guest_log.info(device.frontend, "frontend channel closed", device=device.name)
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
        guest_log.warning(
            device.frontend,
            "frontend broke the input ring protocol; disconnecting",
            device=device.name,
            reason=exc,
        )
        self._teardown(device)
        self._spawn(self._set_state(device, XenbusState.CLOSING))

    # -- XenStore ----------------------------------------------------------------------

    def _new_device(self, frontend: int, devid: int, backend_path: str) -> _Vkbd:
        return _Vkbd(frontend, devid, backend_path)

    async def _prepare(self, device: _Vkbd) -> None:
        device.config = await self._read_config(device)

    async def _read_config(self, device: _Vkbd) -> VkbdFeatures:
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
        return VkbdFeatures(
            unique_id,
            width,
            height,
            keyboard=not await flag(kbdif.FIELD_FEAT_DSBL_KEYBRD),
            pointer=not await flag(kbdif.FIELD_FEAT_DSBL_POINTER),
            abs_pointer=await flag(kbdif.FIELD_FEAT_ABS_POINTER),
            raw_pointer=await flag(kbdif.FIELD_FEAT_RAW_POINTER),
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
        return found[0] if found else DEFAULT_RESOLUTION

    async def _connect(self, device: _Vkbd) -> None:
        front = device.frontend_path
        assert device.config is not None
        try:
            ref = await self._read_u32(f"{front}/{kbdif.FIELD_RING_GREF}")
            remote_port = await self._read_u32(f"{front}/{kbdif.FIELD_EVT_CHANNEL}")
            requests = FrontendRequests(
                abs_pointer=await self._read(f"{front}/{kbdif.FIELD_REQ_ABS_POINTER}") == "1",
                multi_touch=await self._read(f"{front}/{kbdif.FIELD_REQ_MTOUCH}") == "1",
                raw_pointer=await self._read(f"{front}/{kbdif.FIELD_REQ_RAW_POINTER}") == "1",
            )
            device.mapping = self._hv.grants.map(device.frontend, [ref])
            device.page = device.mapping.view()
            device.port = self._hv.events.bind_interdomain(device.frontend, remote_port)
            device.core = InputDevice(device.config, requests, device.page)
            device.core.check_out_ring()
        except (ProtocolError, HypervisorError) as exc:
            guest_log.warning(
                device.frontend, "cannot connect frontend", device=device.name, reason=exc
            )
            self._teardown(device)
            await self._set_state(device, XenbusState.CLOSING)
            return
        self._ports[device.port] = device
        await self._set_state(device, XenbusState.CONNECTED)
        guest_log.info(
            device.frontend,
            "input connected",
            device=device.name,
            absolute=device.core.absolute,
            raw=device.core.raw,
            touch=device.core.touch,
        )

    def _teardown(self, device: _Vkbd) -> None:
        if device.port is not None:
            self._ports.pop(device.port, None)
            with contextlib.suppress(HypervisorError):
                self._hv.events.unbind(device.port)
            device.port = None
        if device.core is not None:
            device.core.release()
        device.core = None
        if device.page is not None:
            device.page.release()
            device.page = None
        if device.mapping is not None:
            with contextlib.suppress(HypervisorError):
                device.mapping.close()
            device.mapping = None
