"""The virtio-gpu 2D device model: control and cursor queues, scanouts, planes.

`GpuDevice` answers the guest's virtio-gpu driver: it pops requests from the control
queue, copies each request out of guest memory once, carries it out and writes the
answer (VIRTIO_GPU_RESP_OK_* or VIRTIO_GPU_RESP_ERR_*) into the request's writable
buffers. Commands complete synchronously, so a fenced command's answer is its fence:
the answer echoes VIRTIO_GPU_FLAG_FENCE, fence_id, ctx_id (and ring_idx).

Every scanout is a connector in the planes registry, keyed (guest domid, device index,
scanout id). It is blank until SET_SCANOUT shows a resource; from then on it shows the
resource's host copy (a memfd buffer), and every RESOURCE_FLUSH counts a frame.
"""

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pvdisplay import logs
from pvdisplay.planes.model import PlaneInfo, PlaneKey, PlaneRegistry
from pvdisplay.virtio import VirtioError
from pvdisplay.virtio import gpu_wire as wire
from pvdisplay.virtio.gpu_resource import GpuRect, Resource, ResourceError, host_bytes
from pvdisplay.virtio.gpu_wire import CtrlType, Format
from pvdisplay.virtio.memory import GuestMemoryMap
from pvdisplay.virtio.virtqueue import (
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    Chain,
    Virtqueue,
)
from pvdisplay.wire import edid
from pvdisplay.wire.layout import Layout

log = logging.getLogger(__name__)
guest_log = logs.PeerLog(log)
"""Lines the guest (one front-end at a time) can make us write, limited."""

DEVICE_FEATURES = (
    (1 << wire.VIRTIO_GPU_F_EDID)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
)
"""Feature bits the device model implements (the transport adds VIRTIO_F_VERSION_1 etc.)."""

MAX_BACKING_ENTRIES = 16384
"""Most scatter entries one ATTACH_BACKING may carry (QEMU's limit)."""
MAX_REQUEST = wire.RESOURCE_ATTACH_BACKING.struct.size + MAX_BACKING_ENTRIES * (
    wire.MEM_ENTRY.struct.size
)
MAX_HOST_MEMORY = 256 << 20
"""Bytes all resources of one device may hold on the host (QEMU's max_hostmem default),
counted in whole pages: each resource is its own memfd."""
MAX_RESOURCES = 512
"""Most resources one device holds at once. Each costs a descriptor and a mapping, so the
byte budget alone would let a guest of tiny resources exhaust the process's descriptors;
a Linux guest uses a few per scanout (fbdev, KMS framebuffers, cursor)."""

_HDR_SIZE = wire.CTRL_HDR.struct.size
_ECHOED_FLAGS = wire.VIRTIO_GPU_FLAG_FENCE | wire.VIRTIO_GPU_FLAG_INFO_RING_IDX


def check_scanouts(scanouts: Sequence[tuple[int, int]]) -> None:
    """ValueError, naming the limit, unless a device can serve these (width, height)
    scanouts: 1..VIRTIO_GPU_MAX_SCANOUTS of them, each a size an EDID timing carries
    (1..edid.MAX_ACTIVE a side), and a framebuffer for each within MAX_HOST_MEMORY (else
    the guest could not show all of them at once)."""
    if not 0 < len(scanouts) <= wire.VIRTIO_GPU_MAX_SCANOUTS:
        raise ValueError(f"1..{wire.VIRTIO_GPU_MAX_SCANOUTS} scanouts, got {len(scanouts)}")
    for width, height in scanouts:
        edid.preferred_timing(width, height)
    needed = sum(host_bytes(width, height) for width, height in scanouts)
    if needed > MAX_HOST_MEMORY:
        raise ValueError(
            f"a framebuffer for every scanout needs {-(-needed >> 20)} MiB, more than the "
            f"{MAX_HOST_MEMORY >> 20} MiB a device may hold"
        )


@dataclass(frozen=True)
class Cursor:
    """The pointer image as the guest last set it; `image` None while hidden.

    `image` is 64x64 pixels in the cursor resource's `fourcc`, rows packed.
    """

    scanout_id: int
    x: int
    y: int
    hot_x: int = 0
    hot_y: int = 0
    fourcc: str = ""
    image: bytes | None = None


@dataclass
class _Scanout:
    width: int
    height: int
    resource: Resource | None = None
    rect: GpuRect = field(default_factory=lambda: GpuRect(0, 0, 0, 0))
    frame: int = 0
    damage: GpuRect | None = None


class GpuDevice:
    """One virtio-gpu device: `scanouts` connectors of the given (width, height).

    Planes are published as PlaneKey(`guest_domid`, `device_index`, scanout id).
    """

    def __init__(
        self,
        memory: GuestMemoryMap,
        scanouts: Sequence[tuple[int, int]],
        planes: PlaneRegistry,
        guest_domid: int,
        device_index: int = 0,
    ) -> None:
        check_scanouts(scanouts)
        self._memory = memory
        self._planes = planes
        self._domid = guest_domid
        self._devid = device_index
        self._scanouts = [_Scanout(width, height) for width, height in scanouts]
        self._resources: dict[int, Resource] = {}
        self._cursor: Cursor | None = None
        self._handlers: dict[int, tuple[Layout, Callable[[tuple[int, ...]], bytes]]] = {
            CtrlType.CMD_GET_DISPLAY_INFO: (wire.CTRL_HDR, self._get_display_info),
            CtrlType.CMD_GET_EDID: (wire.GET_EDID, self._get_edid),
            CtrlType.CMD_RESOURCE_CREATE_2D: (wire.RESOURCE_CREATE_2D, self._create_2d),
            CtrlType.CMD_RESOURCE_UNREF: (wire.RESOURCE_UNREF, self._unref),
            CtrlType.CMD_SET_SCANOUT: (wire.SET_SCANOUT, self._set_scanout),
            CtrlType.CMD_RESOURCE_FLUSH: (wire.RESOURCE_FLUSH, self._flush),
            CtrlType.CMD_TRANSFER_TO_HOST_2D: (wire.TRANSFER_TO_HOST_2D, self._transfer),
            CtrlType.CMD_RESOURCE_DETACH_BACKING: (wire.RESOURCE_DETACH_BACKING, self._detach),
        }
        for scanout_id in range(len(self._scanouts)):
            self._publish(scanout_id)

    @property
    def display_info(self) -> list[tuple[int, int]]:
        """The (width, height) of every scanout, as GET_DISPLAY_INFO reports it."""
        return [(scanout.width, scanout.height) for scanout in self._scanouts]

    @property
    def cursor(self) -> Cursor | None:
        return self._cursor

    @property
    def host_memory(self) -> int:
        """Bytes the guest's resources hold on the host, whole pages each."""
        return sum(resource.host_bytes for resource in self._resources.values())

    def take_damage(self, scanout_id: int) -> GpuRect | None:
        """What changed on the scanout since the last call, in scanout coordinates: the
        bounding box of the RESOURCE_FLUSHes since (the whole picture after SET_SCANOUT);
        None when nothing did. Lets a display update send only the flushed pixels."""
        scanout = self._scanouts[scanout_id]
        damage, scanout.damage = scanout.damage, None
        return damage

    def config_bytes(self) -> bytes:
        """`struct virtio_gpu_config` (vhost-user GET_CONFIG): no pending event; scanout
        sizes never change under the guest (QEMU's vhost-user-gpu front-end owns the event
        fields anyway, see docs/virtio-gpu.md)."""
        return wire.CONFIG.pack(0, 0, len(self._scanouts), 0)

    def write_config(self, offset: int, data: bytes) -> None:
        """A guest write to the config space: only events_clear is writable, and with no
        event ever raised it has nothing to clear."""
        clear = wire.CONFIG.fields["events_clear"]
        if offset != clear.offset or len(data) != clear.size:
            guest_log.warning("guest", "config write ignored", offset=offset, size=len(data))

    def handle_control(self, queue: Virtqueue) -> bool:
        """Answer every request on the control queue; returns whether to interrupt.

        Raises VirtioError when the ring is corrupt, after answering what it took before.
        """
        chains, broken = self._drain(queue)
        for chain in chains:
            answer = self._control(chain.read(MAX_REQUEST))
            written = chain.write(answer)
            if written < len(answer):
                guest_log.warning("guest", "answer cut short", room=written, size=len(answer))
            queue.push(chain, written)
        if broken is not None:
            raise broken
        return queue.should_notify()

    def handle_cursor(self, queue: Virtqueue) -> bool:
        """Carry out every cursor queue request (they have no answer).

        Raises VirtioError when the ring is corrupt, after carrying out what it took before.
        """
        chains, broken = self._drain(queue)
        for chain in chains:
            try:
                self._cursor_command(chain.read(wire.UPDATE_CURSOR.struct.size))
            except ResourceError as exc:
                guest_log.warning("guest", "cursor command failed", reason=exc)
            queue.push(chain, 0)
        if broken is not None:
            raise broken
        return queue.should_notify()

    def reset(self) -> None:
        """Back to the state after construction: no resources, every scanout blank."""
        for scanout_id, scanout in enumerate(self._scanouts):
            scanout.damage = None
            if scanout.resource is not None:
                scanout.resource = None
                self._publish(scanout_id)
        for resource in self._resources.values():
            resource.close()
        self._resources.clear()
        self._cursor = None

    def remap(self, memory: GuestMemoryMap) -> None:
        """Use `memory`, a new map of the same guest, from now on: resources, scanouts and
        planes stay, every backing is looked up anew. A backing no longer in guest RAM is
        detached (transfers from it fail until the guest attaches another); nothing of the
        previous map is referenced afterwards, so it can be unmapped."""
        self._memory = memory
        for resource in self._resources.values():
            if resource.backing is None:
                continue
            try:
                resource.resolve(memory)
            except VirtioError as exc:
                resource.detach()
                guest_log.warning(
                    "guest",
                    "backing left guest memory, detached",
                    resource=resource.resource_id,
                    reason=exc.message,
                )

    def close(self) -> None:
        """Free every resource and remove the scanouts' planes."""
        self.reset()
        for scanout_id in range(len(self._scanouts)):
            self._planes.remove(PlaneKey(self._domid, self._devid, scanout_id))

    @staticmethod
    def _drain(queue: Virtqueue) -> tuple[list[Chain], VirtioError | None]:
        """The chains the guest published, and the error that broke the ring after them:
        the transport stops the ring, but the requests taken before still get answers."""
        chains: list[Chain] = []
        try:
            while (chain := queue.pop()) is not None:
                chains.append(chain)
        except VirtioError as exc:
            return chains, exc
        return chains, None

    def _control(self, request: bytes) -> bytes:
        if len(request) < _HDR_SIZE:
            guest_log.warning("guest", "request shorter than its header", size=len(request))
            return wire.CTRL_HDR.pack(CtrlType.RESP_ERR_UNSPEC, 0, 0, 0, 0)
        kind, flags, fence_id, ctx_id, ring_idx = wire.CTRL_HDR.unpack(request)
        try:
            body = self._run(kind, request)
            answer = CtrlType.RESP_OK_NODATA if not body else int.from_bytes(body[:4], "little")
        except ResourceError as exc:
            guest_log.warning(
                "guest",
                "command failed",
                command=_name(kind),
                answer=exc.code.name,
                reason=exc.message,
            )
            body, answer = b"", exc.code
        echoed = flags & _ECHOED_FLAGS if flags & wire.VIRTIO_GPU_FLAG_FENCE else 0
        header = wire.CTRL_HDR.pack(
            answer,
            echoed,
            fence_id if echoed else 0,
            ctx_id if echoed else 0,
            ring_idx if echoed & wire.VIRTIO_GPU_FLAG_INFO_RING_IDX else 0,
        )
        return header + body[_HDR_SIZE:]

    def _run(self, kind: int, request: bytes) -> bytes:
        """Carry out one command; returns its answer with the answer type in the header
        (b"" for OK_NODATA)."""
        if kind == CtrlType.CMD_RESOURCE_ATTACH_BACKING:
            return self._attach(request)
        entry = self._handlers.get(kind)
        if entry is None:
            raise ResourceError(CtrlType.RESP_ERR_UNSPEC, f"unsupported command {kind:#x}")
        layout, handler = entry
        return handler(_decode(layout, request))

    def _get_display_info(self, _: tuple[int, ...]) -> bytes:
        modes: list[int] = []
        for n in range(wire.VIRTIO_GPU_MAX_SCANOUTS):
            if n < len(self._scanouts):
                modes += [0, 0, self._scanouts[n].width, self._scanouts[n].height, 1, 0]
            else:
                modes += [0] * 6
        return _typed(CtrlType.RESP_OK_DISPLAY_INFO, wire.RESP_DISPLAY_INFO.pack(*modes))

    def _get_edid(self, fields: tuple[int, ...]) -> bytes:
        (scanout_id,) = fields
        scanout = self._scanout(scanout_id, CtrlType.RESP_ERR_INVALID_PARAMETER)
        block = edid.build_edid(
            scanout.width, scanout.height, unique_id=self._unique_id(scanout_id)
        )
        return _typed(CtrlType.RESP_OK_EDID, wire.RESP_EDID.pack(len(block), block))

    def _create_2d(self, fields: tuple[int, ...]) -> bytes:
        resource_id, fmt, width, height = fields
        if resource_id == 0 or resource_id in self._resources:
            raise ResourceError(
                CtrlType.RESP_ERR_INVALID_RESOURCE_ID, f"resource id {resource_id} taken"
            )
        if fmt not in Format.__members__.values():
            raise ResourceError(CtrlType.RESP_ERR_INVALID_PARAMETER, f"format {fmt} unknown")
        if width == 0 or height == 0:
            raise ResourceError(CtrlType.RESP_ERR_INVALID_PARAMETER, f"{width}x{height} resource")
        if len(self._resources) >= MAX_RESOURCES:
            raise ResourceError(
                CtrlType.RESP_ERR_OUT_OF_MEMORY, f"{MAX_RESOURCES} resources already"
            )
        size = host_bytes(width, height)
        if self.host_memory + size > MAX_HOST_MEMORY:
            raise ResourceError(CtrlType.RESP_ERR_OUT_OF_MEMORY, f"{size} more bytes refused")
        try:
            resource = Resource(resource_id, Format(fmt), width, height)
        except OSError as exc:
            # Out of descriptors or address space: the guest asked for more than the host has.
            raise ResourceError(CtrlType.RESP_ERR_OUT_OF_MEMORY, str(exc)) from None
        self._resources[resource_id] = resource
        return b""

    def _unref(self, fields: tuple[int, ...]) -> bytes:
        resource = self._resource(fields[0])
        for scanout_id, scanout in enumerate(self._scanouts):
            if scanout.resource is resource:
                scanout.resource, scanout.damage = None, None
                self._publish(scanout_id)
        del self._resources[resource.resource_id]
        resource.close()
        return b""

    def _attach(self, request: bytes) -> bytes:
        resource_id, count = _decode(wire.RESOURCE_ATTACH_BACKING, request)
        resource = self._resource(resource_id)
        if count > MAX_BACKING_ENTRIES:
            raise ResourceError(CtrlType.RESP_ERR_UNSPEC, f"{count} backing entries")
        if resource.backing is not None:
            raise ResourceError(CtrlType.RESP_ERR_UNSPEC, f"resource {resource_id} already backed")
        start = wire.RESOURCE_ATTACH_BACKING.struct.size
        entry = wire.MEM_ENTRY.struct
        if len(request) < start + count * entry.size:
            raise ResourceError(CtrlType.RESP_ERR_UNSPEC, f"request too short for {count} entries")
        entries = [entry.unpack_from(request, start + n * entry.size)[:2] for n in range(count)]
        try:
            resource.attach(entries, self._memory)
        except ResourceError:
            raise
        except VirtioError as exc:
            raise ResourceError(CtrlType.RESP_ERR_UNSPEC, exc.message) from None
        return b""

    def _detach(self, fields: tuple[int, ...]) -> bytes:
        resource = self._resource(fields[0])
        if resource.backing is None:
            raise ResourceError(
                CtrlType.RESP_ERR_UNSPEC, f"resource {resource.resource_id} has no backing"
            )
        resource.detach()
        return b""

    def _set_scanout(self, fields: tuple[int, ...]) -> bytes:
        x, y, width, height, scanout_id, resource_id = fields
        scanout = self._scanout(scanout_id, CtrlType.RESP_ERR_INVALID_SCANOUT_ID)
        if resource_id == 0:
            scanout.resource, scanout.damage = None, None
            self._publish(scanout_id)
            return b""
        resource = self._resource(resource_id)
        rect = GpuRect(x, y, width, height)
        if not rect.inside(resource.width, resource.height):
            raise ResourceError(
                CtrlType.RESP_ERR_INVALID_PARAMETER, f"scanout {rect} outside the resource"
            )
        scanout.resource, scanout.rect = resource, rect
        scanout.damage = GpuRect(0, 0, rect.width, rect.height)
        scanout.frame += 1
        self._publish(scanout_id)
        return b""

    def _flush(self, fields: tuple[int, ...]) -> bytes:
        x, y, width, height, resource_id = fields
        resource = self._resource(resource_id)
        flushed = GpuRect(x, y, width, height)
        if not flushed.inside(resource.width, resource.height):
            raise ResourceError(CtrlType.RESP_ERR_INVALID_PARAMETER, "flush outside the resource")
        for scanout_id, scanout in enumerate(self._scanouts):
            if scanout.resource is resource:
                damage = flushed.clip(scanout.rect)
                if damage is not None:
                    scanout.damage = (
                        damage if scanout.damage is None else scanout.damage.union(damage)
                    )
                scanout.frame += 1
                self._publish(scanout_id)
        resource.copied = 0
        return b""

    def _transfer(self, fields: tuple[int, ...]) -> bytes:
        x, y, width, height, offset, resource_id = fields
        self._resource(resource_id).transfer(GpuRect(x, y, width, height), offset)
        return b""

    def _cursor_command(self, request: bytes) -> None:
        if len(request) < _HDR_SIZE:
            raise ResourceError(CtrlType.RESP_ERR_UNSPEC, "cursor request shorter than its header")
        kind = wire.CTRL_HDR.unpack(request)[0]
        scanout_id, x, y, resource_id, hot_x, hot_y = _decode(wire.UPDATE_CURSOR, request)
        self._scanout(scanout_id, CtrlType.RESP_ERR_INVALID_SCANOUT_ID)
        if kind == CtrlType.CMD_MOVE_CURSOR:
            if self._cursor is not None:
                self._cursor = Cursor(
                    scanout_id,
                    x,
                    y,
                    self._cursor.hot_x,
                    self._cursor.hot_y,
                    self._cursor.fourcc,
                    self._cursor.image,
                )
            else:
                self._cursor = Cursor(scanout_id, x, y)
        elif kind == CtrlType.CMD_UPDATE_CURSOR:
            if resource_id == 0:
                self._cursor = Cursor(scanout_id, x, y, hot_x, hot_y)
                return
            resource = self._resource(resource_id)
            side = wire.CURSOR_SIZE
            if (resource.width, resource.height) != (side, side):
                raise ResourceError(CtrlType.RESP_ERR_INVALID_PARAMETER, "cursor is not 64x64")
            image = resource.read(GpuRect(0, 0, side, side))
            self._cursor = Cursor(scanout_id, x, y, hot_x, hot_y, resource.fourcc, image)
        else:
            raise ResourceError(CtrlType.RESP_ERR_UNSPEC, f"{_name(kind)} on the cursor queue")

    def _scanout(self, scanout_id: int, error: CtrlType) -> _Scanout:
        if scanout_id >= len(self._scanouts):
            raise ResourceError(error, f"no scanout {scanout_id}")
        return self._scanouts[scanout_id]

    def _resource(self, resource_id: int) -> Resource:
        resource = self._resources.get(resource_id)
        if resource is None:
            raise ResourceError(CtrlType.RESP_ERR_INVALID_RESOURCE_ID, f"no resource {resource_id}")
        return resource

    def _unique_id(self, scanout_id: int) -> str:
        return f"virtio-gpu-{self._devid}-{scanout_id}"

    def _publish(self, scanout_id: int) -> None:
        scanout = self._scanouts[scanout_id]
        info = PlaneInfo(
            domid=self._domid,
            devid=self._devid,
            connector=scanout_id,
            unique_id=self._unique_id(scanout_id),
            mode_width=scanout.width,
            mode_height=scanout.height,
            presented_at=time.time(),
        )
        resource = scanout.resource
        if resource is None:
            self._planes.publish(info, None)
            return
        rect = scanout.rect
        self._planes.publish(
            dataclasses.replace(
                info,
                # The guest's mode is the rectangle it scans out (QEMU sizes its console so).
                mode_width=rect.width,
                mode_height=rect.height,
                fb_cookie=resource.resource_id,
                fourcc=resource.fourcc,
                width=rect.width,
                height=rect.height,
                stride=resource.stride,
                offset=rect.y * resource.stride + rect.x * wire.BYTES_PER_PIXEL,
                buffer_id=resource.handle.id,
                frame=scanout.frame,
                bytes_copied=resource.copied,
            ),
            resource.handle,
        )


def _decode(layout: Layout, request: bytes) -> tuple[int, ...]:
    if len(request) < layout.struct.size:
        raise ResourceError(
            CtrlType.RESP_ERR_UNSPEC,
            f"{layout.c_type} needs {layout.struct.size} bytes, got {len(request)}",
        )
    return layout.unpack(request[: layout.struct.size])


def _typed(kind: CtrlType, answer: bytes) -> bytes:
    """An answer whose header so far carries only its type (the rest is filled later)."""
    return kind.to_bytes(4, "little") + answer[4:]


def _name(kind: int) -> str:
    try:
        return CtrlType(kind).name
    except ValueError:
        return f"{kind:#x}"
