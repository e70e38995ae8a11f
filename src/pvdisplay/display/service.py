"""The display backend as a running service: XenStore, XenBus states, rings, event channels.

`BackendService` watches `/local/domain/<own domid>/backend/vdispl`, serves every
frontend device it finds with a `backend.DisplayDevice`, and publishes what each
connector shows to a `PlaneRegistry`. `pvdisplay.backend_domain` runs it beside the
input backend and the planes socket, on either hypervisor.

XenStore, XenBus states and the planes socket run on one asyncio loop. The rings run on
one thread of their own, which blocks on the event channel descriptor and dispatches each
fired port to its connector: a page flip then costs a wake-up of that thread, not a turn
of the asyncio loop (docs/display-backend.md, "Why the rings have their own thread").
Each turn handles at most one ring's worth of requests per connector before the other
rings' turns, so no guest can hold the thread. Ports that are not a ring's (the input
devices') and XenBus state changes the rings cause are handed to the loop. A lock keeps
the loop from connecting or tearing down a device while the thread serves it. A
frontend that publishes an impossible ring index is disconnected (backend state
Closing) and never read again. Each device may hold `page_budget` pages of
display buffers and `descriptor_budget` descriptors for them (`backend.DisplayDevice`),
so one guest cannot use up what the backend domain may map, allocate or hold open for
all of them (as long as the budgets together fit the domain's limits:
docs/display-backend.md, docs/security.md).

XenBus states (backend side), per device, following `backend_devices.BackendDevices`:

- found, or frontend Closed/gone: tear down, write `versions`, state InitWait;
- frontend Initialised while InitWait: read its config and transport, map, bind, Connected;
- frontend Closing: tear down, state Closing (then InitWait when it reaches Closed);
- frontend dead (@releaseDomain, or its event channel turned unbound): as Closed;
- frontend misbehaves (bad ring index, unusable transport, a connector's resolution or
  unique-id out of range: the guest owns its connector directories and can rewrite
  them): tear down, state Closing.
"""

import asyncio
import contextlib
import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pvdisplay import logs
from pvdisplay.display.backend import ConnectorConfig, DisplayDevice, FrontendConfig, Reply
from pvdisplay.display.limits import (
    DEFAULT_DESCRIPTOR_BUDGET,
    DEFAULT_PAGE_BUDGET,
    LEGACY_UNIQUE_ID_FIELD,
    MAX_CONNECTORS,
    UNIQUE_ID,
    UNIQUE_ID_FORM,
    mode_problem,
)
from pvdisplay.hv import Hypervisor, HypervisorError, Mapping, PortState
from pvdisplay.planes.model import PlaneRegistry
from pvdisplay.store.aio import AsyncClient
from pvdisplay.wire import displif
from pvdisplay.wire.atomics import AtomicIndices
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.ring import BackRing
from pvdisplay.xenbus import XenbusState
from pvdisplay.xenbus.backend_devices import BackendDevice, BackendDevices

log = logging.getLogger(__name__)
guest_log = logs.PeerLog(log)
"""Lines a guest's doing makes us write, limited per guest (domid)."""

SUPPORTED_VERSIONS = (1, 2)


@dataclass
class _Channel:
    """One connector's transport: request ring, event page, their ports."""

    index: int
    ring: BackRing
    ring_view: memoryview
    ring_mapping: Mapping
    event_view: memoryview
    event_indices: AtomicIndices
    event_mapping: Mapping
    req_port: int
    evt_port: int
    in_prod: int
    in_cons: int
    """The frontend's `in_cons` as last read."""

    def release(self) -> None:
        self.ring.release()
        self.ring_view.release()
        self.event_indices.release()
        self.event_view.release()
        for mapping in (self.ring_mapping, self.event_mapping):
            with contextlib.suppress(HypervisorError):
                mapping.close()


@dataclass
class _Device(BackendDevice[DisplayDevice]):
    channels: list[_Channel] = field(default_factory=list)


class TransportError(Exception):
    """The frontend's published configuration or transport cannot be used."""


class BackendService(BackendDevices[_Device]):
    """All vdispl devices this backend domain serves."""

    def __init__(
        self,
        hv: Hypervisor,
        xs: AsyncClient,
        planes: PlaneRegistry,
        copy_frames: bool,
        other_port: Callable[[int], None] = lambda port: None,
        *,
        page_budget: int = DEFAULT_PAGE_BUDGET,
        descriptor_budget: int = DEFAULT_DESCRIPTOR_BUDGET,
    ) -> None:
        """`other_port` gets every fired port that is not a display ring's (the input devices')."""
        super().__init__(xs, hv.domid, displif.DRIVER_NAME, (displif.DRIVER_NAME,))
        self._hv = hv
        self._events = hv.events
        self._other_port = other_port
        self._planes = planes
        self._copy_frames = copy_frames
        self._page_budget = page_budget
        self._descriptor_budget = descriptor_budget
        self._ports: dict[int, tuple[_Device, _Channel]] = {}
        # Rings that had more than a ring's worth waiting: served again before the thread
        # next sleeps, after every other fired ring.
        self._again: dict[int, tuple[_Device, _Channel]] = {}
        # Held by the ring thread while it serves, and by the loop while it connects or
        # tears down: `_ports`, the channels and each `DisplayDevice`.
        self._ring_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ring_thread: threading.Thread | None = None
        self._stopping = False
        # A loopback channel (both ends ours, as Xen allows) that wakes the ring thread:
        # to stop, or to serve the rings of a device the loop has just connected.
        self._wake_ports: tuple[int, int] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        receiver = self._events.bind_unbound_port(self._hv.domid)
        self._wake_ports = (receiver, self._events.bind_interdomain(self._hv.domid, receiver))
        self._ring_thread = threading.Thread(
            target=self._serve_rings, name="display-rings", daemon=True
        )
        self._ring_thread.start()
        await super().start()

    async def stop(self) -> None:
        if self._ring_thread is not None and self._wake_ports is not None:
            self._stopping = True
            self._events.notify(self._wake_ports[1])
            await asyncio.to_thread(self._ring_thread.join)
            self._ring_thread = None
            wake_ports, self._wake_ports = self._wake_ports, None
            for port in wake_ports:
                with contextlib.suppress(HypervisorError):
                    self._events.unbind(port)
        await super().stop()

    def _usage(self, device: _Device) -> dict[str, object]:
        core = device.core
        return {
            "buffers": core.buffers if core else 0,
            "pages": core.pages if core else 0,
            "page_budget": self._page_budget,
            "descriptors": core.descriptors if core else 0,
            "descriptor_budget": self._descriptor_budget,
            "bytes_copied": core.bytes_copied if core else 0,
        }

    # -- XenStore ------------------------------------------------------------------

    def _new_device(self, frontend: int, devid: int, backend_path: str) -> _Device:
        return _Device(frontend, devid, backend_path)

    async def _prepare(self, device: _Device) -> None:
        await self._xs.write(
            f"{device.backend_path}/{displif.FIELD_BE_VERSIONS}",
            displif.format_versions(SUPPORTED_VERSIONS),
        )

    # -- connecting ----------------------------------------------------------------

    async def _connect(self, device: _Device) -> None:
        try:
            config = await self._read_config(device)
            for connector in config.connectors:
                device.channels.append(await self._open_channel(device, connector.index))
        except (TransportError, ProtocolError, HypervisorError) as exc:
            guest_log.warning(
                device.frontend, "cannot connect frontend", device=device.name, reason=exc
            )
            self._teardown(device)
            await self._set_state(device, XenbusState.CLOSING)
            return
        core = DisplayDevice(
            self._hv,
            config,
            self._planes,
            self._copy_frames,
            page_budget=self._page_budget,
            descriptor_budget=self._descriptor_budget,
        )
        with self._ring_lock:
            device.core = core
            for channel in device.channels:
                self._ports[channel.req_port] = (device, channel)
                self._ports[channel.evt_port] = (device, channel)
                # Requests the frontend sent before its ports were ours woke no one.
                self._again[id(channel)] = (device, channel)
        if self._wake_ports is not None:
            self._events.notify(self._wake_ports[1])
        await self._set_state(device, XenbusState.CONNECTED)

    async def _read_config(self, device: _Device) -> FrontendConfig:
        front = device.frontend_path
        version_text = await self._read(f"{front}/{displif.FIELD_FE_VERSION}")
        if version_text is None:
            # Linux's xen-drm-front never writes `version` (nor reads `versions`), and it
            # asks for GET_EDID: a frontend that did not choose gets the newest version,
            # a superset of the older ones, as displ_be serves it without asking.
            version = max(SUPPORTED_VERSIONS)
        else:
            try:
                version = int(version_text)
            except ValueError:
                raise TransportError(f"frontend version {version_text!r}") from None
        if version not in SUPPORTED_VERSIONS:
            raise TransportError(f"frontend chose unsupported version {version}")
        connectors: list[ConnectorConfig] = []
        # As many as the toolstack writes and the frontend library reads.
        for index in range(MAX_CONNECTORS):
            base = f"{front}/{index}"
            resolution = await self._read(f"{base}/{displif.FIELD_RESOLUTION}")
            if resolution is None:
                break
            # The guest owns F/<i>: it can remove it and write any values back.
            width, height = displif.parse_resolution(resolution)
            problem = mode_problem(width, height)
            if problem is not None:
                raise TransportError(f"connector {index}: {problem}")
            unique_id = (
                await self._read(f"{base}/{displif.FIELD_UNIQUE_ID}")
                or await self._read(f"{base}/{LEGACY_UNIQUE_ID_FIELD}")
                or str(index)
            )
            if not UNIQUE_ID.fullmatch(unique_id):
                raise TransportError(
                    f"connector {index}: unique-id {unique_id[:80]!r} is not {UNIQUE_ID_FORM}"
                )
            connectors.append(ConnectorConfig(index, width, height, unique_id))
        if not connectors:
            raise TransportError(f"no connectors under {front}")
        be_alloc = await self._read(f"{front}/{displif.FIELD_BE_ALLOC}") == "1"
        return FrontendConfig(device.frontend, device.devid, tuple(connectors), be_alloc, version)

    async def _open_channel(self, device: _Device, index: int) -> _Channel:
        base = f"{device.frontend_path}/{index}"
        ring_ref = await self._read_u32(f"{base}/{displif.FIELD_REQ_RING_REF}")
        req_port = await self._read_u32(f"{base}/{displif.FIELD_REQ_CHANNEL}")
        evt_ref = await self._read_u32(f"{base}/{displif.FIELD_EVT_RING_REF}")
        evt_port = await self._read_u32(f"{base}/{displif.FIELD_EVT_CHANNEL}")
        grants, events, fe = self._hv.grants, self._hv.events, device.frontend
        ring_mapping = grants.map(fe, [ring_ref])
        opened: list[Callable[[], None]] = [ring_mapping.close]
        try:
            event_mapping = grants.map(fe, [evt_ref])
            opened.append(event_mapping.close)
            local_req = events.bind_interdomain(fe, req_port)
            opened.append(lambda: events.unbind(local_req))
            local_evt = events.bind_interdomain(fe, evt_port)
            ring_view = ring_mapping.view()
            event_view = event_mapping.view()
            event_indices = displif.page_indices(event_view)
            return _Channel(
                index,
                BackRing(ring_view, displif.REQUEST_SIZE),
                ring_view,
                ring_mapping,
                event_view,
                event_indices,
                event_mapping,
                local_req,
                local_evt,
                event_indices.load(displif.IN_PROD_OFFSET),
                event_indices.load(displif.IN_CONS_OFFSET),
            )
        except BaseException:
            for undo in reversed(opened):
                with contextlib.suppress(HypervisorError):
                    undo()
            raise

    def _teardown(self, device: _Device) -> None:
        with self._ring_lock:
            self._release(device)

    def _release(self, device: _Device) -> None:
        """`_teardown` for the ring thread, which holds the lock already."""
        for channel in device.channels:
            for port in (channel.req_port, channel.evt_port):
                self._ports.pop(port, None)
                with contextlib.suppress(HypervisorError):
                    self._hv.events.unbind(port)
            channel.release()
        device.channels.clear()
        if device.core is not None:
            device.core.close()
            device.core = None
            guest_log.info(device.frontend, "frontend disconnected", device=device.name)

    # -- rings ---------------------------------------------------------------------

    def _serve_rings(self) -> None:
        """The ring thread: sleep until ports fire, serve them, until `stop`."""
        while True:
            try:
                fired = self._events.pending(0 if self._again else None)
            except Exception:
                # The hypervisor connection is gone: nothing can be served any more.
                log.exception("waiting for event channels failed; rings no longer served")
                return
            if self._stopping:
                return
            try:
                with self._ring_lock:
                    self._on_events(fired)
            except Exception:
                # A bug of ours must not leave every guest's rings unserved.
                log.exception("serving the rings failed")

    def _on_events(self, fired: list[int]) -> None:
        waiting, self._again = self._again, {}
        try:
            for port in fired:
                entry = self._ports.get(port)
                if entry is None:
                    if self._wake_ports is None or port != self._wake_ports[0]:
                        self._to_loop(self._other_port, port)
                    continue
                device, channel = entry
                if self._events.status(port).state == PortState.UNBOUND:
                    guest_log.info(device.frontend, "frontend channel closed", device=device.name)
                    self._release(device)
                    self._to_loop(self._spawn, self._set_state(device, XenbusState.INIT_WAIT))
                elif port == channel.req_port:
                    self._service(device, channel)
            while waiting:
                device, channel = waiting.pop(next(iter(waiting)))
                self._service(device, channel)
        finally:
            # A turn that failed halfway must not lose the rings still waiting for one.
            self._again.update(waiting)

    def _to_loop(self, callback: Callable[[Any], None], argument: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback, argument)

    def _service(self, device: _Device, channel: _Channel) -> None:
        """Answer the requests waiting on one ring, at most a ring's worth per call.

        Responses and events are published as they are made, the notifications sent
        once at the end: the frontend then wakes once per batch, not once per channel.
        """
        core = device.core
        if core is None or channel not in device.channels:
            return
        ring = channel.ring
        notify_requests = notify_events = False
        failure: ProtocolError | None = None
        # Counted across the final checks too: a frontend that adds requests whenever the
        # ring runs dry must still wait for its next turn after a ring's worth.
        handled = 0
        try:
            while True:
                events: list[bytes] = []
                while handled < ring.size and (slot := ring.take_request()) is not None:
                    reply = self._handle(core, channel.index, slot)
                    ring.new_response()[:] = reply.response
                    events += reply.events
                    handled += 1
                if ring.push_responses():
                    notify_requests = True
                for event in events:
                    if self._publish_event(device, channel, event):
                        notify_events = True
                if handled == ring.size:
                    # More may be waiting: let the other guests' rings go first.
                    self._again[id(channel)] = (device, channel)
                    break
                if not ring.final_check_for_requests():
                    break
        except ProtocolError as exc:
            failure = exc
        if notify_requests:
            self._events.notify(channel.req_port)
        if notify_events:
            self._events.notify(channel.evt_port)
        if failure is not None:
            guest_log.warning(
                device.frontend,
                "frontend broke the ring protocol; disconnecting",
                device=device.name,
                connector=channel.index,
                reason=failure,
            )
            self._release(device)
            self._to_loop(self._spawn, self._set_state(device, XenbusState.CLOSING))

    def _handle(self, core: DisplayDevice, index: int, slot: bytes) -> Reply:
        try:
            return core.handle(index, slot)
        except Exception:
            # A bug of ours must still cost the guest only this request.
            log.exception("request handling failed", extra=logs.fields(connector=index))
            header = displif.decode_request_header(slot)
            return Reply(displif.encode_response(header.id, header.operation, -errno.EIO))

    def _publish_event(self, device: _Device, channel: _Channel, event: bytes) -> bool:
        """Put `event` on the connector's event page; False if the frontend left no room."""
        page, indices = channel.event_view, channel.event_indices
        if (channel.in_prod - channel.in_cons) & 0xFFFFFFFF >= displif.IN_RING_LEN:
            # Read again only when the last value read leaves no room: the frontend only
            # moves it forward, so until then the room it showed is there.
            # Acquire: the slot is not overwritten before the frontend is done reading it.
            channel.in_cons = indices.load(displif.IN_CONS_OFFSET)
            if (channel.in_prod - channel.in_cons) & 0xFFFFFFFF >= displif.IN_RING_LEN:
                guest_log.warning(
                    device.frontend,
                    "event ring full; event dropped",
                    device=device.name,
                    connector=channel.index,
                    id=displif.decode_event(event).id,
                )
                return False
        displif.write_event(page, channel.in_prod, event)
        channel.in_prod = (channel.in_prod + 1) & 0xFFFFFFFF
        # Release: the frontend sees the event in its slot before it sees in_prod cover it.
        indices.store(displif.IN_PROD_OFFSET, channel.in_prod)
        return True
