"""The back-end side of the vhost-user protocol (QEMU docs/interop/vhost-user.rst), sans-IO.

QEMU (the front-end) keeps the virtio transport and sends this process the guest's memory
(SET_MEM_TABLE, memfd descriptors to mmap), the layout of each virtqueue (SET_VRING_*) and
one eventfd per queue for each direction: the guest's kick arrives on the kick fd, the
back-end interrupts the guest through the call fd. `Backend` is the state machine behind
one connection: `handle(message)` applies a request and returns the reply to send, if
any; the adapter (`pvdisplay.virtio.server`) moves bytes and descriptors, watches the kick
fds `Backend.kick_fds` lists and calls `Backend.process(index)` when one fires.

Also here: the vhost-user-gpu display channel (docs/interop/vhost-user-gpu.rst), the
second socket QEMU hands over with VHOST_USER_GPU_SET_SOCKET, on which the back-end tells
QEMU's own display what the scanouts show (`DisplayChannel`).

Descriptors in a message belong to `Backend` once handed to `handle`: it closes every one
it does not keep, including on error.
"""

import collections
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pvdisplay import logs
from pvdisplay.virtio import VirtioError
from pvdisplay.virtio.gpu import Cursor
from pvdisplay.virtio.memory import GuestMemoryMap, Region
from pvdisplay.virtio.virtqueue import (
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    Virtqueue,
)
from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError

log = logging.getLogger(__name__)

# Requests from the front-end (vhost-user.rst, "Front-end message types").
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
GET_CONFIG = 24
SET_CONFIG = 25
GPU_SET_SOCKET = 33
RESET_DEVICE = 34

VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

VIRTIO_F_VERSION_1 = 32
F_PROTOCOL_FEATURES = 30
"""VHOST_USER_F_PROTOCOL_FEATURES: the front-end may use (GET|SET)_PROTOCOL_FEATURES."""

PROTOCOL_F_MQ = 0
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_CONFIG = 9
PROTOCOL_F_RESET_DEVICE = 13
PROTOCOL_FEATURES = (
    1 << PROTOCOL_F_MQ
    | 1 << PROTOCOL_F_REPLY_ACK
    | 1 << PROTOCOL_F_CONFIG
    | 1 << PROTOCOL_F_RESET_DEVICE
)
"""What this back-end implements: queue count query, acknowledgements, config space, reset."""

TRANSPORT_FEATURES = (
    1 << VIRTIO_F_VERSION_1
    | 1 << F_PROTOCOL_FEATURES
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_RING_F_EVENT_IDX
)

HEADER = struct.Struct("<III")
MAX_PAYLOAD = 4096
"""Bigger than any request this back-end accepts (a full SET_MEM_TABLE is 264 bytes)."""
MAX_FDS = 8
"""The most descriptors one message carries (VHOST_MEMORY_BASELINE_NREGIONS)."""
MAX_CONFIG = 256

_U64 = struct.Struct("<Q")
_VRING_STATE = struct.Struct("<II")
_VRING_ADDR = struct.Struct("<IIQQQQ")
_MEMORY_HEADER = struct.Struct("<II")
_MEMORY_REGION = struct.Struct("<QQQQ")
_CONFIG_HEADER = struct.Struct("<III")
_VRING_INDEX_MASK = 0xFF
_VRING_NOFD = 0x100


class VhostUserError(ProtocolError):
    """A request this back-end cannot honour; the connection should be dropped."""


@dataclass
class VhostUserMessage:
    """One vhost-user message: header fields, payload and the descriptors that came with it."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        return HEADER.pack(self.request, self.flags, len(self.payload)) + self.payload


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(request, flags, payload size) of a 12-byte header; VhostUserError if unacceptable."""
    if len(data) != HEADER.size:
        raise VhostUserError(errno.EPROTO, f"header of {len(data)} bytes")
    request, flags, size = HEADER.unpack(data)
    if flags & 0x3 != VERSION:
        raise VhostUserError(errno.EPROTO, f"protocol version {flags & 0x3}")
    if size > MAX_PAYLOAD:
        raise VhostUserError(errno.EMSGSIZE, f"payload of {size} bytes")
    return request, flags, size


class MessageReader:
    """Frames the front-end's byte stream into `VhostUserMessage`s, a piece at a time.

    The adapter reads at most `wanted` bytes per recvmsg, so a read never crosses into
    the next message, and hands each piece to `feed` with the descriptors that came with
    it: descriptors travel with the first bytes of the sendmsg that carried them (the
    header), and belong to the message being read. A front-end that stops mid-message
    leaves the reader waiting for the rest, not the process.

    The reader owns descriptors fed to it until `feed` returns them in a VhostUserMessage;
    `close` (and a VhostUserError from `feed`) closes those it holds.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self._fds: list[int] = []
        self._header: tuple[int, int, int] | None = None

    @property
    def wanted(self) -> int:
        """How many bytes the next read may take: what is left of the header or payload."""
        if self._header is None:
            return HEADER.size - len(self._data)
        return self._header[2] - len(self._data)

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> VhostUserMessage | None:
        """Take `data` (at most `wanted` bytes) and its descriptors; returns the message
        they complete, if any. VhostUserError for a header this back-end refuses."""
        self._fds += fds
        if len(data) > self.wanted:
            self.close()
            raise ValueError(f"{len(data)} bytes fed, {self.wanted} wanted")
        if len(self._fds) > MAX_FDS:
            self.close()
            raise VhostUserError(errno.EINVAL, f"{len(self._fds)} descriptors in one message")
        self._data += data
        if self._header is None:
            if len(self._data) < HEADER.size:
                return None
            try:
                self._header = parse_header(bytes(self._data))
            except VhostUserError:
                self.close()
                raise
            self._data.clear()
        request, flags, size = self._header
        if len(self._data) < size:
            return None
        message = VhostUserMessage(request, flags, bytes(self._data), self._fds)
        self._data.clear()
        self._fds = []
        self._header = None
        return message

    def close(self) -> None:
        """Forget the partial message and close its descriptors."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._data.clear()
        self._header = None


def reply(request: int, payload: bytes) -> VhostUserMessage:
    return VhostUserMessage(request, VERSION | FLAG_REPLY, payload)


class Device(Protocol):
    """A virtio device model served over vhost-user."""

    def handle_queue(self, index: int, queue: Virtqueue) -> bool:
        """Serve what the guest queued on `queue`; True if the guest should be interrupted.

        VirtioError when the ring is corrupt: the back-end then stops it.
        """
        ...

    def config_bytes(self) -> bytes:
        """The device-specific configuration space."""
        ...

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write to the configuration space."""
        ...

    def remap(self, memory: GuestMemoryMap) -> None:
        """The front-end replaced the memory table: look guest addresses up in `memory`
        from now on, keeping what the driver set up. The previous map goes away after."""
        ...

    def reset(self) -> None:
        """The driver reset the device: back to the state after construction."""
        ...

    def close(self) -> None:
        """Forget guest state (memory is going away)."""
        ...


DeviceFactory = Callable[[GuestMemoryMap], Device]
"""Builds the device over the guest memory of the connection's first SET_MEM_TABLE."""


@dataclass
class Vring:
    """What the front-end told us about one virtqueue, and the queue once started."""

    index: int
    num: int = 0
    desc_user_addr: int = 0
    avail_user_addr: int = 0
    used_user_addr: int = 0
    base: int = 0
    enabled: bool = False
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    queue: Virtqueue | None = None

    def close_fds(self) -> None:
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            if fd is not None:
                os.close(fd)
        self.kick_fd = self.call_fd = self.err_fd = None
        self.queue = None


class Backend:
    """One front-end connection's state: features, memory, vrings and the device.

    `device_features` are the device-specific feature bits offered; `queues` how many
    virtqueues the device has. `on_gpu_socket` receives the descriptor of
    VHOST_USER_GPU_SET_SOCKET (ownership passes to it).
    """

    def __init__(
        self,
        device_factory: DeviceFactory,
        device_features: int,
        queues: int,
        on_gpu_socket: Callable[[int], None] | None = None,
    ) -> None:
        self._device_factory = device_factory
        self._queues = queues
        self._on_gpu_socket = on_gpu_socket
        self.offered_features = TRANSPORT_FEATURES | device_features
        self.features = 0
        self.protocol_features = 0
        self.vrings = [Vring(index) for index in range(queues)]
        self.memory: GuestMemoryMap | None = None
        self.device: Device | None = None
        self._mappings: list[mmap.mmap] = []
        # Regions whose file we could not seal against shrinking, with the size each
        # needs: checked before every use, since reading past a file's end is SIGBUS.
        self._unsealed: list[tuple[mmap.mmap, int]] = []
        self._features_just_set = False
        self._told_unshared = False

    @property
    def kick_fds(self) -> dict[int, int]:
        """Kick eventfd of each started ring, by ring index: the adapter watches these."""
        return {
            vring.index: vring.kick_fd
            for vring in self.vrings
            if vring.kick_fd is not None and vring.queue is not None
        }

    def call_fd(self, index: int) -> int | None:
        return self.vrings[index].call_fd

    def handle(self, message: VhostUserMessage) -> VhostUserMessage | None:
        """Apply one request; returns the reply to send (None when there is none)."""
        fds = list(message.fds)
        message.fds = []
        try:
            self.check_memory()
        except VhostUserError:
            for fd in fds:
                os.close(fd)
            raise
        log.debug(
            "vhost-user request",
            extra=logs.fields(request=message.request, size=len(message.payload), fds=len(fds)),
        )
        self._notice_unshared_memory(message.request)
        try:
            answer = self._dispatch(message, fds)
        except (VhostUserError, VirtioError, OSError, ValueError) as exc:
            if not self._acknowledging(message):
                raise
            log.warning(
                "vhost-user request failed",
                extra=logs.fields(request=message.request, reason=str(exc)),
            )
            return reply(message.request, _U64.pack(1))
        finally:
            for fd in fds:
                os.close(fd)
        if answer is None and self._acknowledging(message):
            return reply(message.request, _U64.pack(0))
        return answer

    def process(self, index: int) -> bool:
        """Serve ring `index` after its kick; True if its call fd should be written.

        A corrupt ring is stopped (it leaves `kick_fds`) and its err fd written, once.
        """
        vring = self.vrings[index]
        queue = vring.queue
        if queue is None or self.device is None or not vring.enabled:
            return False
        self.check_memory()
        try:
            return self.device.handle_queue(index, queue)
        except VirtioError as exc:
            log.error("virtqueue stopped", extra=logs.fields(queue=index, reason=str(exc)))
            vring.queue = None
            if vring.err_fd is not None:
                os.eventfd_write(vring.err_fd, 1)
            # Requests answered before the ring broke still deserve their interrupt.
            return queue.should_notify()

    def check_memory(self) -> None:
        """Raise VhostUserError (EFAULT) if the front-end shrank a region's file since
        SET_MEM_TABLE. Sealed regions cannot shrink; the others are checked here, before
        each request and each kick, so that a shrunk file costs this front-end its
        connection instead of costing the process a SIGBUS."""
        for mapping, needed in self._unsealed:
            if mapping.size() < needed:
                raise VhostUserError(
                    errno.EFAULT,
                    f"guest memory file shrank to {mapping.size()} bytes under a region"
                    f" that needs {needed}",
                )

    def close(self) -> None:
        """Drop everything: the front-end went away."""
        self._reset()
        self.protocol_features = 0
        self._told_unshared = False

    def _notice_unshared_memory(self, request: int) -> None:
        """QEMU starts the device with SET_FEATURES and SET_MEM_TABLE right after, unless
        no guest RAM has a descriptor to share (no memfd or shared memory backend): then
        it fails on its side, sends no table, and the guest runs without a GPU. Only this
        back-end's log is sure to be read by whoever runs it, so say what QEMU needs."""
        if (
            self._features_just_set
            and request != SET_MEM_TABLE
            and self.memory is None
            and not self._told_unshared
        ):
            log.warning(UNSHARED_MEMORY)
            self._told_unshared = True
        self._features_just_set = request == SET_FEATURES

    def _acknowledging(self, message: VhostUserMessage) -> bool:
        return bool(
            message.flags & FLAG_NEED_REPLY
            and self.protocol_features & 1 << PROTOCOL_F_REPLY_ACK
            and message.request not in _HAS_REPLY
        )

    def _dispatch(self, message: VhostUserMessage, fds: list[int]) -> VhostUserMessage | None:
        request, payload = message.request, message.payload
        if request == GET_FEATURES:
            return reply(request, _U64.pack(self.offered_features))
        if request == SET_FEATURES:
            features = _u64(payload)
            if features & ~self.offered_features:
                raise VhostUserError(errno.EINVAL, f"features {features:#x} were not offered")
            self.features = features
            return None
        if request == GET_PROTOCOL_FEATURES:
            return reply(request, _U64.pack(PROTOCOL_FEATURES))
        if request == SET_PROTOCOL_FEATURES:
            self.protocol_features = _u64(payload) & PROTOCOL_FEATURES
            return None
        if request == SET_OWNER:
            return None
        if request in (RESET_OWNER, RESET_DEVICE):
            self._reset()
            return None
        if request == GET_QUEUE_NUM:
            return reply(request, _U64.pack(self._queues))
        if request == SET_MEM_TABLE:
            self._set_mem_table(payload, fds)
            return None
        if request == SET_VRING_NUM:
            vring, num = self._vring_state(payload)
            if not 0 < num <= 32768 or num & (num - 1):
                raise VhostUserError(errno.EINVAL, f"ring size {num}")
            vring.num = num
            return None
        if request == SET_VRING_ADDR:
            self._set_vring_addr(payload)
            return None
        if request == SET_VRING_BASE:
            vring, base = self._vring_state(payload)
            self._restart(vring, base & 0xFFFF)
            return None
        if request == GET_VRING_BASE:
            vring, _ = self._vring_state(payload)
            if vring.queue is not None:
                vring.base = vring.queue.next_avail
            vring.close_fds()
            return reply(request, _VRING_STATE.pack(vring.index, vring.base))
        if request in (SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR):
            self._set_vring_fd(request, payload, fds)
            return None
        if request == SET_VRING_ENABLE:
            vring, enable = self._vring_state(payload)
            vring.enabled = bool(enable)
            return None
        if request == GET_CONFIG:
            offset, size, flags, _ = self._config_request(payload)
            space = self.device.config_bytes() if self.device is not None else b""
            data = space[offset : offset + size].ljust(size, b"\0")
            return reply(request, _CONFIG_HEADER.pack(offset, size, flags) + data)
        if request == SET_CONFIG:
            offset, _, _, data = self._config_request(payload)
            if self.device is None:
                raise VhostUserError(errno.ENODEV, "SET_CONFIG before SET_MEM_TABLE")
            self.device.write_config(offset, data)
            return None
        if request == GPU_SET_SOCKET:
            if len(fds) != 1 or self._on_gpu_socket is None:
                raise VhostUserError(errno.EINVAL, f"GPU_SET_SOCKET with {len(fds)} fds")
            self._on_gpu_socket(fds.pop())
            return None
        raise VhostUserError(errno.ENOSYS, f"request {request} is not supported")

    def _vring_state(self, payload: bytes) -> tuple[Vring, int]:
        if len(payload) != _VRING_STATE.size:
            raise VhostUserError(errno.EINVAL, f"vring state of {len(payload)} bytes")
        index, num = _VRING_STATE.unpack(payload)
        return self._vring(index), num

    def _vring(self, index: int) -> Vring:
        if not 0 <= index < self._queues:
            raise VhostUserError(errno.EINVAL, f"no vring {index}")
        return self.vrings[index]

    def _set_vring_addr(self, payload: bytes) -> None:
        if len(payload) != _VRING_ADDR.size:
            raise VhostUserError(errno.EINVAL, f"vring address of {len(payload)} bytes")
        index, _, desc, used, avail, _ = _VRING_ADDR.unpack(payload)
        vring = self._vring(index)
        vring.desc_user_addr, vring.used_user_addr, vring.avail_user_addr = desc, used, avail

    def _set_vring_fd(self, request: int, payload: bytes, fds: list[int]) -> None:
        value = _u64(payload)
        vring = self._vring(value & _VRING_INDEX_MASK)
        if value & _VRING_NOFD:
            fd = None
        elif len(fds) == 1:
            fd = fds.pop()
        else:
            raise VhostUserError(errno.EINVAL, f"vring descriptor message with {len(fds)} fds")
        attribute = {SET_VRING_KICK: "kick_fd", SET_VRING_CALL: "call_fd"}.get(request, "err_fd")
        old = getattr(vring, attribute)
        if old is not None:
            os.close(old)
        setattr(vring, attribute, fd)
        if request == SET_VRING_KICK:
            self._start(vring)

    def _start(self, vring: Vring) -> None:
        """The kick fd starts a ring (vhost-user.rst "Starting and stopping rings")."""
        vring.queue = None
        if not self.features & 1 << F_PROTOCOL_FEATURES:
            vring.enabled = True
        if vring.kick_fd is None or self.memory is None:
            return
        memory = self.memory
        try:
            vring.queue = Virtqueue(
                memory,
                vring.num,
                memory.user_to_guest(vring.desc_user_addr),
                memory.user_to_guest(vring.avail_user_addr),
                memory.user_to_guest(vring.used_user_addr),
                event_idx=bool(self.features & 1 << VIRTIO_RING_F_EVENT_IDX),
                next_avail=vring.base,
            )
        except VirtioError as exc:
            raise VhostUserError(errno.EINVAL, f"vring {vring.index}: {exc}") from None

    def _restart(self, vring: Vring, base: int) -> None:
        """SET_VRING_BASE. QEMU stops the device (GET_VRING_BASE) both when the VM pauses
        and when the driver resets it, and tells the back-end nothing more without
        PROTOCOL_F_STATUS; it then restarts every ring from the index it saved, which a
        driver reset has set back to 0. So a used ring restarting from 0 while none runs
        means the driver starts over, and must find no resource of its previous life."""
        stopped = all(other.queue is None for other in self.vrings)
        if stopped and vring.base != 0 and base == 0 and self.device is not None:
            log.info("driver reset the device", extra=logs.fields(ring=vring.index))
            self.device.reset()
        vring.base = base

    def _set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        if len(payload) < _MEMORY_HEADER.size:
            raise VhostUserError(errno.EINVAL, "memory table too short")
        count, _ = _MEMORY_HEADER.unpack_from(payload)
        if count == 0:
            raise VhostUserError(errno.EINVAL, f"memory table without regions: {UNSHARED_MEMORY}")
        if count != len(fds) or len(payload) < _MEMORY_HEADER.size + count * _MEMORY_REGION.size:
            raise VhostUserError(errno.EINVAL, f"{count} regions, {len(fds)} fds")
        mappings: list[mmap.mmap] = []
        regions: list[Region] = []
        unsealed: list[tuple[mmap.mmap, int]] = []
        try:
            for i, fd in enumerate(fds):
                guest_addr, size, user_addr, offset = _MEMORY_REGION.unpack_from(
                    payload, _MEMORY_HEADER.size + i * _MEMORY_REGION.size
                )
                # mmap maps past a file's end without complaint; touching it is SIGBUS.
                file_size = os.fstat(fd).st_size
                if file_size < offset + size:
                    raise ValueError(f"region {offset}+{size} beyond its {file_size}-byte file")
                mapping = mmap.mmap(fd, size + offset, mmap.MAP_SHARED)
                mappings.append(mapping)
                if not _sealed_against_shrinking(fd):
                    unsealed.append((mapping, offset + size))
                view = memoryview(mapping)[offset : offset + size]
                regions.append(Region(guest_addr, size, user_addr, view))
            memory = GuestMemoryMap(regions)
        except (OSError, ValueError, OverflowError) as exc:
            del regions
            _unmap(mappings)
            raise VhostUserError(errno.EINVAL, f"memory table: {exc}") from None
        self._stop_rings()
        old_memory, old_mappings = self.memory, self._mappings
        self.memory, self._mappings, self._unsealed = memory, mappings, unsealed
        if self.device is None:
            self.device = self._device_factory(memory)
        else:
            # QEMU re-sends the table to a running back-end (memory hotplug) and on every
            # restart of the device (after a VM pause): the guest still holds its resources.
            # A restart after a driver reset is told apart by its rings (`_restart`).
            self.device.remap(memory)
        _release(old_memory, old_mappings)
        for vring in self.vrings:
            if vring.kick_fd is not None:
                self._start(vring)
        log.info(
            "guest memory mapped",
            extra=logs.fields(regions=count, bytes=sum(r.size for r in memory.regions)),
        )

    def _config_request(self, payload: bytes) -> tuple[int, int, int, bytes]:
        if len(payload) < _CONFIG_HEADER.size:
            raise VhostUserError(errno.EINVAL, "config request too short")
        offset, size, flags = _CONFIG_HEADER.unpack_from(payload)
        data = payload[_CONFIG_HEADER.size :]
        if size > MAX_CONFIG or offset > MAX_CONFIG or len(data) != size:
            raise VhostUserError(errno.EINVAL, f"config {offset}+{size} with {len(data)} bytes")
        return offset, size, flags, data

    def _stop_rings(self) -> None:
        for vring in self.vrings:
            if vring.queue is not None:
                vring.base = vring.queue.next_avail
            vring.queue = None

    def _drop_memory(self) -> None:
        self._stop_rings()
        if self.device is not None:
            self.device.close()
            self.device = None
        _release(self.memory, self._mappings)
        self.memory = None
        self._mappings = []
        self._unsealed = []

    def _reset(self) -> None:
        self._drop_memory()
        for vring in self.vrings:
            vring.close_fds()
        self.vrings = [Vring(index) for index in range(self._queues)]
        # The negotiated protocol outlives a device reset (vhost-user.rst, RESET_DEVICE).
        self.features = 0


UNSHARED_MEMORY = (
    "the front-end started the device without sharing guest memory; run QEMU with "
    "-object memory-backend-memfd,id=mem,size=<its -m>,share=on -numa node,memdev=mem"
)
"""Logged once per connection: vhost-user reaches guest RAM only through descriptors."""

_HAS_REPLY = frozenset(
    {GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_VRING_BASE, GET_CONFIG}
)


def _u64(payload: bytes) -> int:
    if len(payload) != _U64.size:
        raise VhostUserError(errno.EINVAL, f"u64 payload of {len(payload)} bytes")
    value: int = _U64.unpack(payload)[0]
    return value


def _sealed_against_shrinking(fd: int) -> bool:
    """Seal a memfd against shrinking (QEMU's memfd backend is sealed already); False
    when the file cannot be sealed (not a memfd, or created without MFD_ALLOW_SEALING)."""
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError:
        try:
            return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
        except OSError:
            return False
    return True


def _release(memory: GuestMemoryMap | None, mappings: Sequence[mmap.mmap]) -> None:
    """Unmap guest memory nothing looks up any more."""
    if memory is not None:
        memory.close()
    _unmap(mappings)


def _unmap(mappings: Sequence[mmap.mmap]) -> None:
    for mapping in mappings:
        # A view a reader still holds keeps the mapping alive; it goes when that view does.
        with contextlib.suppress(BufferError):
            mapping.close()


# vhost-user-gpu display channel (the back-end is the requester here).
GPU_GET_PROTOCOL_FEATURES = 1
GPU_SET_PROTOCOL_FEATURES = 2
GPU_GET_DISPLAY_INFO = 3
GPU_CURSOR_POS = 4
GPU_CURSOR_POS_HIDE = 5
GPU_CURSOR_UPDATE = 6
GPU_SCANOUT = 7
GPU_UPDATE = 8

_GPU_CURSOR_POS = struct.Struct("<III")
_GPU_SCANOUT = struct.Struct("<III")
_GPU_UPDATE = struct.Struct("<IIIII")
_GPU_CURSOR_HOT = struct.Struct("<II")
CURSOR_SIZE = 64
MAX_GPU_REPLY = 1024
MAX_HELD_UPDATES = 4
"""UPDATEs of one scanout kept until QEMU's handshake reply; older ones are dropped."""


class DisplayChannel:
    """Messages to QEMU's display over the vhost-user-gpu socket, and QEMU's replies.

    Nothing is sent until QEMU has answered VHOST_USER_GPU_GET_PROTOCOL_FEATURES (QEMU
    accepts no other message first). No protocol features are used: scanouts go as pixel
    UPDATEs (x8r8g8b8), not dmabufs. Requests carry flags 0: this protocol has no version
    bits.

    What waits for a slow QEMU stays bounded: a scanout's SCANOUT, cursor image and cursor
    position each wait as their latest version only (a new image carries its position, so
    it replaces a waiting move), and they go out once what is already being written has
    drained. Before the handshake, a SCANOUT drops the UPDATEs waiting for
    the surface it replaces, and at most MAX_HELD_UPDATES UPDATEs wait per scanout, the
    oldest dropped first. After it, UPDATEs go out in order: their sender merges frames.
    """

    def __init__(self) -> None:
        self._outgoing: collections.deque[memoryview] = collections.deque()
        self._outgoing.append(memoryview(HEADER.pack(GPU_GET_PROTOCOL_FEATURES, 0, 0)))
        # The latest message of each kind that supersedes its predecessors, in the order
        # they were last replaced; keyed (request, scanout id).
        self._latest: dict[tuple[int, int], bytes] = {}
        # UPDATEs made before the handshake, with their scanout id.
        self._held: list[tuple[int, bytes]] = []
        self._incoming = bytearray()
        self.ready = False
        # What QEMU was last told of the pointer: where it is, and which image.
        self._cursor_at: tuple[int, int, int] | None = None
        self._cursor_image: tuple[bytes, int, int] | None = None

    @property
    def pending(self) -> int:
        """Bytes waiting to be sent, including those held until the handshake ends."""
        return (
            sum(map(len, self._outgoing))
            + sum(map(len, self._latest.values()))
            + sum(len(message) for _, message in self._held)
        )

    def data_to_send(self) -> memoryview:
        """The next bytes to write (empty when there are none)."""
        if not self._outgoing and self.ready:
            self._release_latest()
        return self._outgoing[0] if self._outgoing else memoryview(b"")

    def sent(self, count: int) -> None:
        """`count` bytes of `data_to_send()` were written."""
        rest = self._outgoing[0][count:]
        if rest:
            self._outgoing[0] = rest
        else:
            self._outgoing.popleft()

    def receive(self, data: bytes) -> None:
        """Bytes QEMU sent; VhostUserError for anything but a reply this side expects."""
        self._incoming += data
        while len(self._incoming) >= HEADER.size:
            request, flags, size = HEADER.unpack_from(self._incoming)
            if size > MAX_GPU_REPLY or not flags & FLAG_REPLY:
                raise VhostUserError(errno.EPROTO, f"gpu message {request} flags {flags:#x}")
            if len(self._incoming) < HEADER.size + size:
                return
            del self._incoming[: HEADER.size + size]
            if request != GPU_GET_PROTOCOL_FEATURES or self.ready:
                raise VhostUserError(errno.EPROTO, f"unexpected gpu reply {request}")
            self._outgoing.append(
                memoryview(HEADER.pack(GPU_SET_PROTOCOL_FEATURES, 0, 8) + _U64.pack(0))
            )
            # SCANOUTs first: an UPDATE waiting here is for the surface the latest made.
            self._release_latest()
            self._outgoing.extend(memoryview(message) for _, message in self._held)
            self._held = []
            self.ready = True

    def scanout(self, scanout_id: int, width: int, height: int) -> None:
        """Show a `width`x`height` scanout; 0x0 turns it off."""
        self._held = [(held, message) for held, message in self._held if held != scanout_id]
        body = _GPU_SCANOUT.pack(scanout_id, width, height)
        self._supersede((GPU_SCANOUT, scanout_id), _message(GPU_SCANOUT, body))

    def update(self, scanout_id: int, rect: tuple[int, int, int, int], pixels: bytes) -> None:
        """New content for `rect` (x, y, width, height): rows of x8r8g8b8 (native) pixels."""
        x, y, width, height = rect
        if len(pixels) != width * height * 4:
            raise ValueError(f"{len(pixels)} bytes for a {width}x{height} update")
        body = _GPU_UPDATE.pack(scanout_id, x, y, width, height)
        if self.ready:
            # After the SCANOUT it may depend on.
            self._release_latest()
            header = HEADER.pack(GPU_UPDATE, 0, len(body) + len(pixels))
            self._outgoing.append(memoryview(header + body))
            self._outgoing.append(memoryview(pixels))
            return
        same = [n for n, (held, _) in enumerate(self._held) if held == scanout_id]
        if len(same) >= MAX_HELD_UPDATES:
            del self._held[same[0]]
        self._held.append((scanout_id, _message(GPU_UPDATE, body, pixels)))

    def cursor_position(self, scanout_id: int, x: int, y: int, visible: bool) -> None:
        request = GPU_CURSOR_POS if visible else GPU_CURSOR_POS_HIDE
        body = _GPU_CURSOR_POS.pack(scanout_id, x, y)
        self._supersede((GPU_CURSOR_POS, scanout_id), _message(request, body))

    def cursor_update(
        self, scanout_id: int, position: tuple[int, int], hotspot: tuple[int, int], image: bytes
    ) -> None:
        """A new 64x64 a8r8g8b8 cursor image with its hotspot, shown at `position`."""
        if len(image) != CURSOR_SIZE * CURSOR_SIZE * 4:
            raise ValueError(f"cursor image of {len(image)} bytes")
        body = _GPU_CURSOR_POS.pack(scanout_id, *position) + _GPU_CURSOR_HOT.pack(*hotspot)
        self._latest.pop((GPU_CURSOR_POS, scanout_id), None)
        self._supersede((GPU_CURSOR_UPDATE, scanout_id), _message(GPU_CURSOR_UPDATE, body, image))

    def show_cursor(self, cursor: Cursor | None) -> None:
        """Bring QEMU's pointer in line with the guest's: a new image or hotspot goes as
        CURSOR_UPDATE, a move as CURSOR_POS, hiding as CURSOR_POS_HIDE, no change as
        nothing. ProtocolError for an image format that cannot be converted."""
        if cursor is None or cursor.image is None:
            if self._cursor_at is not None:
                self.cursor_position(*self._cursor_at, visible=False)
            self._cursor_at = self._cursor_image = None
            return
        at = (cursor.scanout_id, cursor.x, cursor.y)
        image = (cursor.image, cursor.hot_x, cursor.hot_y)
        if image != self._cursor_image:
            pixels = _argb_cursor(cursor.fourcc, cursor.image)
            self.cursor_update(at[0], (at[1], at[2]), (image[1], image[2]), pixels)
        elif at != self._cursor_at:
            self.cursor_position(*at, visible=True)
        self._cursor_at, self._cursor_image = at, image

    def _supersede(self, slot: tuple[int, int], message: bytes) -> None:
        self._latest.pop(slot, None)
        self._latest[slot] = message

    def _release_latest(self) -> None:
        self._outgoing.extend(memoryview(message) for message in self._latest.values())
        self._latest.clear()


def _message(request: int, body: bytes, data: bytes = b"") -> bytes:
    return HEADER.pack(request, 0, len(body) + len(data)) + body + data


def _argb_cursor(fourcc_text: str, image: bytes) -> bytes:
    """The 64x64 cursor as native a8r8g8b8, the one format CURSOR_UPDATE takes."""
    if fourcc_text == "AR24":
        return image
    fmt = fourcc.by_fourcc(fourcc.fourcc_code(fourcc_text))
    rgba = fourcc.to_rgba(
        fmt, np.frombuffer(image, np.uint8), CURSOR_SIZE, CURSOR_SIZE, fmt.min_pitch(CURSOR_SIZE)
    )
    return rgba[..., [2, 1, 0, 3]].tobytes()
