"""vhost-user back-end protocol: a front-end written from vhost-user.rst drives `Backend`.

Guest memory is a real memfd passed the way QEMU passes it; kick/call are real eventfds.
The device is a recorder that pops and answers chains through the real `Virtqueue`.
"""

import array
import asyncio
import contextlib
import errno
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_virtio_gpu import CREATE, DOMID, FLUSH, SET_SCANOUT, TRANSFER, Rig, command

from guest_vm import wait_for_socket
from pvdisplay.cli import main
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.model import PlaneKey, PlaneRegistry
from pvdisplay.virtio import VirtioError, server
from pvdisplay.virtio import gpu_wire as wire
from pvdisplay.virtio import vhost_user as vu
from pvdisplay.virtio.gpu import DEVICE_FEATURES, Cursor, GpuDevice
from pvdisplay.virtio.gpu_wire import CtrlType, Format
from pvdisplay.virtio.memory import GuestMemoryMap
from pvdisplay.virtio.server import GpuQueues, xrgb_pixels
from pvdisplay.virtio.virtqueue import VIRTIO_RING_F_EVENT_IDX, Virtqueue
from rigs import PATIENCE

pytestmark = pytest.mark.processes

GUEST_BASE = 0x4000_0000
USER_BASE = 0x7F00_0000_0000
MEMORY_SIZE = 1 << 20
QUEUE_SIZE = 16
DESC_GPA = GUEST_BASE
AVAIL_GPA = GUEST_BASE + 0x1000
USED_GPA = GUEST_BASE + 0x2000
REQUEST_GPA = GUEST_BASE + 0x10000
ANSWER_GPA = GUEST_BASE + 0x20000
CONFIG = bytes(range(16))


class Recorder:
    """A device that answers each request with its bytes reversed."""

    def __init__(self, memory: GuestMemoryMap) -> None:
        self.memory = memory
        self.requests: list[tuple[int, bytes]] = []
        self.config_writes: list[tuple[int, bytes]] = []
        self.closed = False

    def handle_queue(self, index: int, queue: Virtqueue) -> bool:
        while (chain := queue.pop()) is not None:
            request = chain.read()
            self.requests.append((index, request))
            queue.push(chain, chain.write(request[::-1]))
        return queue.should_notify()

    def config_bytes(self) -> bytes:
        return CONFIG

    def write_config(self, offset: int, data: bytes) -> None:
        self.config_writes.append((offset, data))

    def remap(self, memory: GuestMemoryMap) -> None:
        self.memory = memory

    def reset(self) -> None:
        self.requests.clear()

    def close(self) -> None:
        self.closed = True


class Guest:
    """Guest RAM in a memfd, and a driver writing one split ring in it."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("guest-ram")
        os.ftruncate(self.fd, MEMORY_SIZE)
        self.ram = mmap.mmap(self.fd, MEMORY_SIZE)
        self.avail_idx = 0

    def write(self, gpa: int, data: bytes) -> None:
        self.ram[gpa - GUEST_BASE : gpa - GUEST_BASE + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        return self.ram[gpa - GUEST_BASE : gpa - GUEST_BASE + length]

    def offer(self, request: bytes, answer_room: int) -> None:
        """Publish a two-descriptor chain: `request` readable, `answer_room` writable."""
        self.write(REQUEST_GPA, request)
        self.write(DESC_GPA, struct.pack("<QIHH", REQUEST_GPA, len(request), 1, 1))
        self.write(DESC_GPA + 16, struct.pack("<QIHH", ANSWER_GPA, answer_room, 2, 0))
        slot = self.avail_idx % QUEUE_SIZE
        self.write(AVAIL_GPA + 4 + 2 * slot, struct.pack("<H", 0))
        self.avail_idx += 1
        self.write(AVAIL_GPA + 2, struct.pack("<H", self.avail_idx & 0xFFFF))

    def used(self) -> tuple[int, list[tuple[int, int]]]:
        (idx,) = struct.unpack("<H", self.read(USED_GPA + 2, 2))
        elements = [
            struct.unpack("<II", self.read(USED_GPA + 4 + 8 * (i % QUEUE_SIZE), 8))
            for i in range(idx)
        ]
        return idx, elements

    def close(self) -> None:
        self.ram.close()
        os.close(self.fd)


def message(
    request: int, payload: bytes = b"", fds: list[int] | None = None, flags: int = 0
) -> vu.VhostUserMessage:
    return vu.VhostUserMessage(request, vu.VERSION | flags, payload, fds or [])


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def mem_table(guest: Guest) -> vu.VhostUserMessage:
    fd = os.dup(guest.fd)
    region = struct.pack("<QQQQ", GUEST_BASE, MEMORY_SIZE, USER_BASE, 0)
    return message(vu.SET_MEM_TABLE, struct.pack("<II", 1, 0) + region, [fd])


def user(gpa: int) -> int:
    return gpa - GUEST_BASE + USER_BASE


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


@pytest.fixture
def guest() -> Iterator[Guest]:
    ram = Guest()
    yield ram
    ram.close()


@pytest.fixture
def backend() -> Iterator[vu.Backend]:
    devices: list[Recorder] = []

    def factory(memory: GuestMemoryMap) -> Recorder:
        devices.append(Recorder(memory))
        return devices[-1]

    back = vu.Backend(factory, device_features=1 << 1, queues=2)
    yield back
    back.close()


def negotiate(backend: vu.Backend, features: int) -> None:
    assert backend.handle(message(vu.SET_FEATURES, u64(features))) is None
    answer = backend.handle(message(vu.GET_PROTOCOL_FEATURES))
    assert answer is not None
    assert backend.handle(message(vu.SET_PROTOCOL_FEATURES, answer.payload)) is None


def start_ring(backend: vu.Backend, guest: Guest, index: int = 0, base: int = 0) -> tuple[int, int]:
    """Set up ring `index` like QEMU does; returns its (kick, call) eventfds."""
    backend.handle(message(vu.SET_VRING_NUM, struct.pack("<II", index, QUEUE_SIZE)))
    backend.handle(message(vu.SET_VRING_BASE, struct.pack("<II", index, base)))
    addr = struct.pack("<IIQQQQ", index, 0, user(DESC_GPA), user(USED_GPA), user(AVAIL_GPA), 0)
    backend.handle(message(vu.SET_VRING_ADDR, addr))
    kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    backend.handle(message(vu.SET_VRING_CALL, u64(index), [os.dup(call)]))
    backend.handle(message(vu.SET_VRING_KICK, u64(index), [os.dup(kick)]))
    backend.handle(message(vu.SET_VRING_ENABLE, struct.pack("<II", index, 1)))
    return kick, call


def test_features_offered_and_negotiated(backend: vu.Backend) -> None:
    answer = backend.handle(message(vu.GET_FEATURES))
    assert answer is not None and answer.flags == vu.VERSION | vu.FLAG_REPLY
    (offered,) = struct.unpack("<Q", answer.payload)
    for bit in (vu.VIRTIO_F_VERSION_1, vu.F_PROTOCOL_FEATURES, VIRTIO_RING_F_EVENT_IDX, 1):
        assert offered >> bit & 1
    with pytest.raises(vu.VhostUserError):
        backend.handle(message(vu.SET_FEATURES, u64(offered | 1 << 5)))
    negotiate(backend, offered)
    assert backend.features == offered
    assert backend.protocol_features == vu.PROTOCOL_FEATURES
    answer = backend.handle(message(vu.GET_QUEUE_NUM))
    assert answer is not None and struct.unpack("<Q", answer.payload) == (2,)


def test_reply_ack_reports_success_and_failure(backend: vu.Backend) -> None:
    negotiate(backend, 1 << vu.F_PROTOCOL_FEATURES)
    ok = backend.handle(message(vu.SET_OWNER, flags=vu.FLAG_NEED_REPLY))
    assert ok is not None and ok.request == vu.SET_OWNER and ok.payload == u64(0)
    bad = backend.handle(
        message(vu.SET_VRING_NUM, struct.pack("<II", 7, 16), flags=vu.FLAG_NEED_REPLY)
    )
    assert bad is not None and bad.payload == u64(1)
    assert backend.handle(message(vu.SET_OWNER)) is None


def test_ring_served_from_shared_memory(backend: vu.Backend, guest: Guest) -> None:
    negotiate(backend, 1 << vu.F_PROTOCOL_FEATURES | 1 << vu.VIRTIO_F_VERSION_1)
    backend.handle(mem_table(guest))
    kick, call = start_ring(backend, guest)
    assert backend.kick_fds.keys() == {0}
    guest.offer(b"hello, device", 64)
    assert backend.process(0)
    assert guest.used() == (1, [(0, 13)])
    assert guest.read(ANSWER_GPA, 13) == b"ecived ,olleh"
    assert backend.call_fd(0) is not None

    state = backend.handle(message(vu.GET_VRING_BASE, struct.pack("<II", 0, 0)))
    assert state is not None and struct.unpack("<II", state.payload) == (0, 1)
    assert backend.kick_fds == {}
    assert not backend.process(0)
    for fd in (kick, call):
        os.close(fd)


def test_disabled_ring_is_not_served(backend: vu.Backend, guest: Guest) -> None:
    negotiate(backend, 1 << vu.F_PROTOCOL_FEATURES)
    backend.handle(mem_table(guest))
    kick, call = start_ring(backend, guest)
    backend.handle(message(vu.SET_VRING_ENABLE, struct.pack("<II", 0, 0)))
    guest.offer(b"x", 4)
    assert not backend.process(0)
    assert guest.used() == (0, [])
    backend.handle(message(vu.SET_VRING_ENABLE, struct.pack("<II", 0, 1)))
    assert backend.process(0)
    assert guest.used()[0] == 1
    for fd in (kick, call):
        os.close(fd)


def test_ring_resumes_from_base_after_new_memory_table(backend: vu.Backend, guest: Guest) -> None:
    negotiate(backend, 1 << vu.F_PROTOCOL_FEATURES)
    backend.handle(mem_table(guest))
    kick, call = start_ring(backend, guest)
    guest.offer(b"one", 8)
    backend.process(0)
    backend.handle(mem_table(guest))
    guest.offer(b"two", 8)
    backend.process(0)
    assert guest.used() == (2, [(0, 3), (0, 3)])
    for fd in (kick, call):
        os.close(fd)


def test_corrupt_gpu_ring_is_stopped_and_reported_once(
    guest: Guest, caplog: pytest.LogCaptureFixture
) -> None:
    """The GPU's control ring: a request before the corruption is answered, then the ring
    stops, the err eventfd fires once, and later kicks are ignored without a word."""
    backend = gpu_backend(PlaneRegistry())
    backend.handle(mem_table(guest))
    err = os.eventfd(0, os.EFD_NONBLOCK)
    backend.handle(message(vu.SET_VRING_ERR, u64(0), [os.dup(err)]))
    kick, call = start_ring(backend, guest)
    guest.offer(wire.CTRL_HDR.pack(CtrlType.CMD_GET_DISPLAY_INFO, 0, 0, 0, 0), 512)
    # A second entry whose head lies outside the descriptor table: the ring is corrupt.
    guest.write(AVAIL_GPA + 4 + 2, struct.pack("<H", QUEUE_SIZE + 3))
    guest.write(AVAIL_GPA + 2, struct.pack("<H", 2))

    assert backend.process(0)  # the answered request still gets its interrupt
    assert guest.used() == (1, [(0, wire.RESP_DISPLAY_INFO.struct.size)])
    assert struct.unpack("<I", guest.read(ANSWER_GPA, 4)) == (CtrlType.RESP_OK_DISPLAY_INFO,)
    assert os.eventfd_read(err) == 1
    assert backend.kick_fds == {}

    caplog.clear()
    for _ in range(3):
        assert not backend.process(0)
    assert caplog.records == []
    with pytest.raises(BlockingIOError):
        os.eventfd_read(err)
    backend.close()
    for fd in (kick, call, err):
        os.close(fd)


PIXELS_GPA = GUEST_BASE + 0x40000
"""Where the GPU tests' framebuffer lives: above the rings and request buffers."""
LOW_SIZE = PIXELS_GPA - GUEST_BASE
OK = CtrlType.RESP_OK_NODATA


def gpu_backend(registry: PlaneRegistry) -> vu.Backend:
    """A back-end serving one 64x32 scanout, negotiated like QEMU does."""
    backend = vu.Backend(
        lambda memory: GpuQueues(GpuDevice(memory, [(64, 32)], registry, DOMID), lambda _: None),
        DEVICE_FEATURES,
        queues=2,
    )
    negotiate(backend, 1 << vu.F_PROTOCOL_FEATURES | 1 << vu.VIRTIO_F_VERSION_1)
    return backend


def split_mem_table(guest: Guest, high: bool = True) -> vu.VhostUserMessage:
    """The same guest RAM as `mem_table`, now as a low region at the same QEMU address
    and, if `high`, the rest (the framebuffer) at another address and file offset."""
    regions = [struct.pack("<QQQQ", GUEST_BASE, LOW_SIZE, USER_BASE, 0)]
    if high:
        high_size = MEMORY_SIZE - LOW_SIZE
        regions.append(struct.pack("<QQQQ", PIXELS_GPA, high_size, 0x5500_0000_0000, LOW_SIZE))
    fds = [os.dup(guest.fd) for _ in regions]
    return message(vu.SET_MEM_TABLE, struct.pack("<II", len(regions), 0) + b"".join(regions), fds)


def control(backend: vu.Backend, guest: Guest, request: bytes) -> int:
    """The answer type of one control queue request."""
    guest.write(ANSWER_GPA, bytes(4))
    guest.offer(request, 1024)
    backend.process(0)
    answer: int = struct.unpack("<I", guest.read(ANSWER_GPA, 4))[0]
    return answer


def draw(guest: Guest, seed: int) -> bytes:
    """A new 64x32 picture in the guest's framebuffer."""
    pixels = np.random.default_rng(seed).integers(0, 256, 64 * 32 * 4, np.uint8).tobytes()
    guest.write(PIXELS_GPA, pixels)
    return pixels


def shown(registry: PlaneRegistry) -> bytes | None:
    """The pixels scanout 0 shows; None while it is blank."""
    plane = registry.get(PlaneKey(DOMID, 0, 0))
    assert plane is not None
    if plane.handle is None:
        return None
    with plane.handle.map() as mapping:
        pixels = bytes(mapping.view()[: plane.info.stride * plane.info.height])
    return pixels


def show_framebuffer(backend: vu.Backend, guest: Guest, registry: PlaneRegistry) -> bytes:
    """Resource 1 backed by the framebuffer, drawn, transferred and flushed to scanout 0."""
    assert control(backend, guest, command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32)) == OK
    attach = wire.CTRL_HDR.pack(CtrlType.CMD_RESOURCE_ATTACH_BACKING, 0, 0, 0, 0)
    attach += struct.pack("<II", 1, 1) + wire.MEM_ENTRY.pack(PIXELS_GPA, 64 * 32 * 4)
    assert control(backend, guest, attach) == OK
    pixels = draw(guest, seed=1)
    assert control(backend, guest, command(TRANSFER, 0, 0, 64, 32, 0, 1)) == OK
    assert control(backend, guest, command(SET_SCANOUT, 0, 0, 64, 32, 0, 1)) == OK
    assert control(backend, guest, command(FLUSH, 0, 0, 64, 32, 1)) == OK
    assert shown(registry) == pixels
    return pixels


def test_new_memory_table_keeps_resources_and_scanouts(guest: Guest) -> None:
    """QEMU re-sends the table to a running guest (here split, the framebuffer at a new
    QEMU address and file offset): resources, scanouts and planes stay, the backing is
    read through the new mapping; a table that no longer covers it fails the transfer."""
    registry = PlaneRegistry()
    backend = gpu_backend(registry)
    backend.handle(mem_table(guest))
    kick, call = start_ring(backend, guest)
    before = show_framebuffer(backend, guest, registry)

    backend.handle(split_mem_table(guest))
    assert shown(registry) == before
    after = draw(guest, seed=2)
    assert control(backend, guest, command(TRANSFER, 0, 0, 64, 32, 0, 1)) == OK
    assert control(backend, guest, command(FLUSH, 0, 0, 64, 32, 1)) == OK
    assert shown(registry) == after

    backend.handle(split_mem_table(guest, high=False))
    draw(guest, seed=3)
    assert control(backend, guest, command(TRANSFER, 0, 0, 64, 32, 0, 1)) == (
        CtrlType.RESP_ERR_UNSPEC
    )
    assert control(backend, guest, command(FLUSH, 0, 0, 64, 32, 1)) == OK
    assert shown(registry) == after
    backend.close()
    assert registry.get(PlaneKey(DOMID, 0, 0)) is None
    for fd in (kick, call):
        os.close(fd)


def restart(backend: vu.Backend, guest: Guest, driver_reset: bool) -> tuple[int, int]:
    """What QEMU sends to stop the device and start it again: the control ring goes on
    from where it stopped, or from 0 when the driver reset the device meanwhile."""
    answer = backend.handle(message(vu.GET_VRING_BASE, struct.pack("<II", 0, 0)))
    assert answer is not None and struct.unpack("<II", answer.payload) == (0, guest.avail_idx)
    if driver_reset:
        guest.write(AVAIL_GPA, bytes(4))
        guest.write(USED_GPA, bytes(4))
        guest.avail_idx = 0
    backend.handle(mem_table(guest))
    return start_ring(backend, guest, base=guest.avail_idx)


def test_paused_vm_keeps_the_device_and_a_driver_reset_clears_it(guest: Guest) -> None:
    registry = PlaneRegistry()
    backend = gpu_backend(registry)
    backend.handle(mem_table(guest))
    fds = list(start_ring(backend, guest))
    pixels = show_framebuffer(backend, guest, registry)

    fds += restart(backend, guest, driver_reset=False)  # the VM paused and resumed
    assert shown(registry) == pixels
    taken = command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32)
    assert control(backend, guest, taken) == CtrlType.RESP_ERR_INVALID_RESOURCE_ID

    fds += restart(backend, guest, driver_reset=True)
    assert shown(registry) is None
    assert control(backend, guest, taken) == OK
    backend.close()
    for fd in fds:
        os.close(fd)


def test_config_space(backend: vu.Backend, guest: Guest) -> None:
    backend.handle(mem_table(guest))
    answer = backend.handle(message(vu.GET_CONFIG, struct.pack("<III", 4, 8, 0) + bytes(8)))
    assert answer is not None
    assert answer.payload == struct.pack("<III", 4, 8, 0) + CONFIG[4:12]
    backend.handle(message(vu.SET_CONFIG, struct.pack("<III", 12, 4, 0) + b"\1\0\0\0"))
    device = backend.device
    assert isinstance(device, Recorder)
    assert device.config_writes == [(12, b"\1\0\0\0")]
    with pytest.raises(vu.VhostUserError):
        backend.handle(message(vu.GET_CONFIG, struct.pack("<III", 0, 300, 0) + bytes(300)))


def test_descriptors_not_kept_are_closed(backend: vu.Backend, guest: Guest) -> None:
    extra = os.eventfd(0)
    with pytest.raises(vu.VhostUserError):
        backend.handle(message(vu.SET_MEM_TABLE, struct.pack("<II", 0, 0), [extra]))
    assert not is_open(extra)
    nofd = os.eventfd(0)
    backend.handle(message(vu.SET_VRING_CALL, u64(0 | 0x100), [nofd]))
    assert not is_open(nofd)
    assert backend.call_fd(0) is None


def qemu_starts_the_device(backend: vu.Backend, guest: Guest, *, shared: bool) -> None:
    """What QEMU 10 sends from connecting to starting the device: the memory table right
    after SET_FEATURES when guest RAM is shared, nothing but SET_VRING_CALLs otherwise."""
    for request in (vu.GET_FEATURES, vu.GET_PROTOCOL_FEATURES):
        backend.handle(message(request))
    backend.handle(message(vu.SET_PROTOCOL_FEATURES, u64(vu.PROTOCOL_FEATURES)))
    backend.handle(message(vu.GET_QUEUE_NUM))
    backend.handle(message(vu.SET_OWNER))
    backend.handle(message(vu.SET_FEATURES, u64(1 << vu.F_PROTOCOL_FEATURES)))
    if shared:
        backend.handle(mem_table(guest))
    for index in (0, 1):
        backend.handle(message(vu.SET_VRING_CALL, u64(index), [os.eventfd(0)]))


@pytest.mark.parametrize("shared", [True, False])
def test_a_device_started_without_shared_memory_says_what_qemu_needs(
    backend: vu.Backend, guest: Guest, caplog: pytest.LogCaptureFixture, shared: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger=vu.__name__):
        qemu_starts_the_device(backend, guest, shared=shared)
        qemu_starts_the_device(backend, guest, shared=shared)  # said once per connection
    said = [record.getMessage() for record in caplog.records]
    if shared:
        assert said == []
    else:
        assert said == [
            "the front-end started the device without sharing guest memory; run QEMU with "
            "-object memory-backend-memfd,id=mem,size=<its -m>,share=on -numa node,memdev=mem"
        ]
    with pytest.raises(vu.VhostUserError, match=r"without regions: .*memory-backend-memfd"):
        backend.handle(message(vu.SET_MEM_TABLE, struct.pack("<II", 0, 0)))


def test_reset_forgets_everything(backend: vu.Backend, guest: Guest) -> None:
    negotiate(backend, 1 << vu.F_PROTOCOL_FEATURES)
    backend.handle(mem_table(guest))
    device = backend.device
    kick, call = start_ring(backend, guest)
    kept = backend.kick_fds[0]
    backend.handle(message(vu.RESET_DEVICE))
    assert isinstance(device, Recorder) and device.closed
    assert backend.memory is None and backend.kick_fds == {} and backend.features == 0
    assert backend.protocol_features == vu.PROTOCOL_FEATURES
    assert not is_open(kept)
    for fd in (kick, call):
        os.close(fd)


def test_ring_outside_guest_memory_is_refused(backend: vu.Backend, guest: Guest) -> None:
    backend.handle(mem_table(guest))
    backend.handle(message(vu.SET_VRING_NUM, struct.pack("<II", 0, QUEUE_SIZE)))
    addr = struct.pack("<IIQQQQ", 0, 0, user(DESC_GPA), USER_BASE + MEMORY_SIZE, user(AVAIL_GPA), 0)
    backend.handle(message(vu.SET_VRING_ADDR, addr))
    kick = os.eventfd(0)
    with pytest.raises(vu.VhostUserError):
        backend.handle(message(vu.SET_VRING_KICK, u64(0), [kick]))
    assert backend.kick_fds == {}


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    request=st.integers(0, 40),
    flags=st.sampled_from([vu.VERSION, vu.VERSION | vu.FLAG_NEED_REPLY]),
    payload=st.binary(max_size=80),
)
def test_arbitrary_requests_fail_cleanly(
    backend: vu.Backend, request: int, flags: int, payload: bytes
) -> None:
    with contextlib.suppress(vu.VhostUserError, VirtioError):
        backend.handle(vu.VhostUserMessage(request, flags, payload, []))


def test_header_checks() -> None:
    assert vu.parse_header(struct.pack("<III", 1, 1, 0)) == (1, 1, 0)
    for bad in (struct.pack("<III", 1, 2, 0), struct.pack("<III", 1, 1, 1 << 20), b"\1\0"):
        with pytest.raises(vu.VhostUserError):
            vu.parse_header(bad)


def test_messages_are_framed_piece_by_piece() -> None:
    reader = vu.MessageReader()
    call = os.eventfd(0)
    data = message(vu.SET_VRING_CALL, u64(1)).encode()
    assert reader.wanted == vu.HEADER.size
    assert reader.feed(data[:5], [call]) is None  # descriptors come with the header
    assert reader.wanted == vu.HEADER.size - 5
    assert reader.feed(data[5:12]) is None
    assert reader.wanted == 8  # the payload, never the next message's header
    assert reader.feed(data[12:15]) is None
    assert reader.feed(data[15:]) == vu.VhostUserMessage(
        vu.SET_VRING_CALL, vu.VERSION, u64(1), [call]
    )
    os.close(call)
    assert reader.feed(message(vu.GET_FEATURES).encode()) == message(vu.GET_FEATURES)

    held = os.eventfd(0)
    assert reader.feed(message(vu.SET_VRING_KICK, u64(0)).encode()[:3], [held]) is None
    reader.close()
    assert not is_open(held)
    refused = os.eventfd(0)
    with pytest.raises(vu.VhostUserError):
        reader.feed(struct.pack("<III", vu.SET_MEM_TABLE, vu.VERSION, 1 << 20), [refused])
    assert not is_open(refused)


PVDISPLAY = str(Path(sys.executable).parent / "pvdisplay")
NOT_A_DESCRIPTOR = 999_999


def test_a_stalled_request_stalls_only_its_front_end(tmp_path: Path) -> None:
    """A front-end that sends half a request: the planes are still served, and the
    request is served when the rest arrives."""
    planes = tmp_path / "planes.sock"
    front, back = socket.socketpair()
    process = subprocess.Popen(
        [PVDISPLAY, "--log-level", "warning", "vhost-user-gpu", "--fd", str(back.fileno()),
         "--planes-socket", str(planes)],
        pass_fds=[back.fileno()],
    )  # fmt: skip
    back.close()
    try:
        wait_for_socket(planes, process)
        request = message(vu.SET_FEATURES, u64(1 << vu.VIRTIO_F_VERSION_1)).encode()
        front.sendall(request[:14])  # the header and part of the payload
        with PlaneClient(planes) as client:
            assert client.list() == []  # answered (no device before SET_MEM_TABLE)
        front.sendall(request[14:] + message(vu.GET_FEATURES).encode())
        front.settimeout(PATIENCE)
        reply = front.recv(vu.HEADER.size + 8)
        assert vu.HEADER.unpack_from(reply) == (vu.GET_FEATURES, vu.VERSION | vu.FLAG_REPLY, 8)
    finally:
        front.close()
        assert process.wait(PATIENCE) == 0  # --fd: done when the connection ends


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_back_end_removes_its_socket_files_when_stopped(
    tmp_path: Path, stop: signal.Signals
) -> None:
    vhost, planes = tmp_path / "vgpu.sock", tmp_path / "planes.sock"
    process = subprocess.Popen(
        [PVDISPLAY, "--log-level", "warning", "vhost-user-gpu", "--socket-path", str(vhost),
         "--planes-socket", str(planes)],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_socket(vhost, process)
        wait_for_socket(planes, process)
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=PATIENCE)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, stderr) == (0, b"")
    assert sorted(tmp_path.iterdir()) == []


def test_a_request_that_fails_unexpectedly_drops_the_front_end(guest: Guest) -> None:
    """Sizes the command line refuses make the device fail to build at SET_MEM_TABLE with
    a ValueError nobody anticipated: that front-end is dropped, the server carries on."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        front, back = socket.socketpair()
        front.setblocking(False)
        served = asyncio.create_task(server.serve(None, back, [(5000, 800)], DOMID, None))
        await loop.sock_sendall(front, message(vu.GET_FEATURES).encode())
        assert len(await loop.sock_recv(front, 64)) == vu.HEADER.size + 8
        table = mem_table(guest)
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", table.fds))]
        front.sendmsg([table.encode()], fds)
        os.close(table.fds[0])
        assert await loop.sock_recv(front, 64) == b""  # closed, not left half set up
        await served
        front.close()

    asyncio.run(asyncio.wait_for(run(), 30))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--fd", "-1"], "Invalid value for '-f' / '--fd': -1 is not in the range x>=0."),
        (
            ["--scanout", "5000x800"],
            "Invalid value for --scanout: 5000x800: sides run from 16 to 4095 (the most an "
            "EDID mode describes)",
        ),
        (
            ["--scanout", "4000x4000"] * 5,
            "Invalid value for --scanout: a framebuffer for every scanout needs 306 MiB, more "
            "than the 256 MiB a device may hold; pass fewer or smaller",
        ),
        (["--scanout", "64x32"] * 17, "Invalid value for --scanout: 1..16 scanouts, got 17; "
         "pass fewer or smaller"),
        (["--fd", str(NOT_A_DESCRIPTOR)], f"descriptor {NOT_A_DESCRIPTOR} is not a usable "
         "socket: Bad file descriptor; pass the descriptor of a connected socket"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(args: list[str], error: str) -> None:
    if "--fd" not in args:
        # Not a descriptor: should the check be missed, the command fails, never serves.
        args = [*args, "--fd", str(NOT_A_DESCRIPTOR)]
    result = CliRunner().invoke(main, ["vhost-user-gpu", *args])
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit)
    assert result.output.splitlines()[-1] == f"Error: {error}"
    assert "Traceback" not in result.output


def test_unusable_paths_are_one_line_errors(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("not a socket")
    runner = CliRunner()
    result = runner.invoke(main, ["vhost-user-gpu", "--socket-path", str(regular)])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: cannot listen on {regular}: exists and is not a socket; pass a new "
        "--socket-path\n",
    )
    assert regular.read_text() == "not a socket"
    vhost, planes = tmp_path / "vgpu.sock", tmp_path / "missing" / "planes.sock"
    result = runner.invoke(
        main, ["vhost-user-gpu", "--socket-path", str(vhost), "--planes-socket", str(planes)]
    )
    assert (result.exit_code, result.output) == (
        1,
        f"Error: cannot serve planes on {planes}: No such file or directory\n",
    )


def test_serving_failure_without_a_planes_socket_names_no_planes_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def out_of_descriptors(*_: object) -> None:
        raise OSError(errno.EMFILE, "cannot accept a front-end: Too many open files")

    monkeypatch.setattr(server, "serve", out_of_descriptors)
    result = CliRunner().invoke(main, ["vhost-user-gpu", "--socket-path", f"{tmp_path}/v.sock"])
    assert (result.exit_code, result.output) == (
        1,
        "Error: cannot accept a front-end: Too many open files\n",
    )


def drain(channel: vu.DisplayChannel) -> bytes:
    out = bytearray()
    while data := channel.data_to_send():
        out += data
        channel.sent(len(data))
    return bytes(out)


def test_display_channel_waits_for_protocol_features() -> None:
    channel = vu.DisplayChannel()
    channel.scanout(0, 640, 480)
    assert drain(channel) == struct.pack("<III", vu.GPU_GET_PROTOCOL_FEATURES, 0, 0)
    assert channel.pending > 0 and not channel.ready
    reply = struct.pack("<III", vu.GPU_GET_PROTOCOL_FEATURES, vu.FLAG_REPLY, 8) + u64(3)
    channel.receive(reply[:5])
    assert not channel.ready
    channel.receive(reply[5:])
    assert channel.ready
    assert drain(channel) == (
        struct.pack("<IIIQ", vu.GPU_SET_PROTOCOL_FEATURES, 0, 8, 0)
        + struct.pack("<IIIIII", vu.GPU_SCANOUT, 0, 12, 0, 640, 480)
    )
    pixels = bytes(range(2 * 3 * 4))
    channel.update(1, (5, 6, 2, 3), pixels)
    assert (
        drain(channel)
        == struct.pack("<IIIIIIII", vu.GPU_UPDATE, 0, 20 + 24, 1, 5, 6, 2, 3) + pixels
    )
    with pytest.raises(vu.VhostUserError):
        channel.receive(struct.pack("<III", vu.GPU_GET_DISPLAY_INFO, vu.FLAG_REPLY, 0))


def test_display_channel_cursor_messages() -> None:
    channel = vu.DisplayChannel()
    channel.receive(struct.pack("<IIIQ", vu.GPU_GET_PROTOCOL_FEATURES, vu.FLAG_REPLY, 8, 0))
    drain(channel)
    image = bytes(64 * 64 * 4)
    channel.cursor_update(0, (10, 20), (1, 2), image)
    channel.cursor_position(0, 11, 21, visible=False)
    assert drain(channel) == (
        struct.pack("<III", vu.GPU_CURSOR_UPDATE, 0, 20 + len(image))
        + struct.pack("<IIIII", 0, 10, 20, 1, 2)
        + image
        + struct.pack("<IIIIII", vu.GPU_CURSOR_POS_HIDE, 0, 12, 0, 11, 21)
    )


def scanout_message(scanout_id: int, width: int, height: int) -> bytes:
    return struct.pack("<IIIIII", vu.GPU_SCANOUT, 0, 12, scanout_id, width, height)


def update_message(scanout_id: int, x: int, pixel: bytes) -> bytes:
    return struct.pack("<IIIIIIII", vu.GPU_UPDATE, 0, 24, scanout_id, x, 0, 1, 1) + pixel


def test_display_channel_holds_only_the_latest_before_the_handshake() -> None:
    """QEMU slow to answer the handshake while the guest changes modes and flushes: what
    waits is the latest SCANOUT of each scanout and the newest UPDATEs after it."""
    channel = vu.DisplayChannel()
    drain(channel)
    for n in range(100):
        channel.scanout(0, 64 + n, 32)
        channel.update(0, (0, 0, 1, 1), bytes([n, 0, 0, 0]))
    channel.scanout(1, 640, 480)
    channel.scanout(0, 800, 600)
    for n in range(100):
        channel.update(0, (n, 0, 1, 1), bytes([n, 1, 0, 0]))
        channel.update(1, (n, 0, 1, 1), bytes([n, 2, 0, 0]))
    channel.scanout(1, 1024, 768)  # the UPDATEs for 640x480 are moot
    channel.receive(struct.pack("<IIIQ", vu.GPU_GET_PROTOCOL_FEATURES, vu.FLAG_REPLY, 8, 0))
    newest = range(100 - vu.MAX_HELD_UPDATES, 100)
    assert drain(channel) == (
        struct.pack("<IIIQ", vu.GPU_SET_PROTOCOL_FEATURES, 0, 8, 0)
        + scanout_message(0, 800, 600)
        + scanout_message(1, 1024, 768)
        + b"".join(update_message(0, n, bytes([n, 1, 0, 0])) for n in newest)
    )
    assert channel.pending == 0


def test_display_channel_merges_cursor_messages_while_qemu_reads() -> None:
    """While QEMU is still reading a big UPDATE, the pointer moves and changes many times:
    what follows the UPDATE is the latest image and the latest position, once each; a
    SCANOUT still comes before the UPDATEs made after it."""
    channel = vu.DisplayChannel()
    channel.receive(struct.pack("<IIIQ", vu.GPU_GET_PROTOCOL_FEATURES, vu.FLAG_REPLY, 8, 0))
    drain(channel)
    frame = bytes(range(256)) * 16
    channel.update(0, (0, 0, 32, 32), frame)
    first = channel.data_to_send()
    channel.sent(len(first) - 1)  # QEMU stops reading mid-update
    images = [bytes([n]) * 64 * 64 * 4 for n in range(3)]
    for n in range(300):
        if n % 100 == 0:
            channel.cursor_update(0, (n, n), (1, 1), images[n // 100])
        channel.cursor_position(0, n, n + 1, visible=True)
    channel.cursor_position(1, 5, 6, visible=True)  # another scanout's pointer
    channel.cursor_position(0, 7, 8, visible=False)
    channel.scanout(0, 32, 32)
    channel.update(0, (0, 0, 1, 1), b"\1\2\3\4")
    update = struct.pack("<IIIIIIII", vu.GPU_UPDATE, 0, 20 + len(frame), 0, 0, 0, 32, 32)
    cursor = struct.pack("<IIIIIIII", vu.GPU_CURSOR_UPDATE, 0, 20 + 64 * 64 * 4, 0, 200, 200, 1, 1)
    expected = (
        (update + frame)[len(first) - 1 :]
        + cursor
        + images[2]
        + struct.pack("<IIIIII", vu.GPU_CURSOR_POS, 0, 12, 1, 5, 6)
        + struct.pack("<IIIIII", vu.GPU_CURSOR_POS_HIDE, 0, 12, 0, 7, 8)
        + scanout_message(0, 32, 32)
        + update_message(0, 0, b"\1\2\3\4")
    )
    assert channel.pending == len(expected)
    assert drain(channel) == expected


def test_display_channel_follows_the_guest_cursor() -> None:
    channel = vu.DisplayChannel()
    channel.receive(struct.pack("<IIIQ", vu.GPU_GET_PROTOCOL_FEATURES, vu.FLAG_REPLY, 8, 0))
    drain(channel)
    # ARGB8888 bytes go through as they are; XRGB8888 gets an opaque alpha.
    argb = bytes(range(256)) * 64
    channel.show_cursor(Cursor(0, 10, 20, hot_x=1, hot_y=2, fourcc="AR24", image=argb))
    update = struct.pack("<III", vu.GPU_CURSOR_UPDATE, 0, 20 + len(argb))
    assert drain(channel) == update + struct.pack("<IIIII", 0, 10, 20, 1, 2) + argb
    channel.show_cursor(Cursor(0, 10, 20, hot_x=1, hot_y=2, fourcc="AR24", image=argb))
    assert drain(channel) == b""
    channel.show_cursor(Cursor(0, 30, 40, hot_x=1, hot_y=2, fourcc="AR24", image=argb))
    assert drain(channel) == struct.pack("<IIIIII", vu.GPU_CURSOR_POS, 0, 12, 0, 30, 40)
    xrgb = bytes([1, 2, 3, 0]) * 64 * 64
    channel.show_cursor(Cursor(0, 30, 40, fourcc="XR24", image=xrgb))
    opaque = bytes([1, 2, 3, 255]) * 64 * 64
    assert drain(channel) == update + struct.pack("<IIIII", 0, 30, 40, 0, 0) + opaque
    channel.show_cursor(Cursor(0, 30, 40))
    channel.show_cursor(None)
    assert drain(channel) == struct.pack("<IIIIII", vu.GPU_CURSOR_POS_HIDE, 0, 12, 0, 30, 40)


@pytest.mark.parametrize(
    ("fmt", "xrgb_bytes"),
    # Where each format's name puts B, G, R and X in memory, the byte order x8r8g8b8 wants.
    [
        (Format.B8G8R8X8_UNORM, [0, 1, 2, 3]),
        (Format.X8R8G8B8_UNORM, [3, 2, 1, 0]),
        (Format.R8G8B8X8_UNORM, [2, 1, 0, 3]),
        (Format.X8B8G8R8_UNORM, [1, 2, 3, 0]),
    ],
)
def test_partial_flush_sends_only_its_rectangle(fmt: Format, xrgb_bytes: list[int]) -> None:
    """What the server queues for a flush: the damaged rectangle's pixels, as x8r8g8b8."""
    rig = Rig([(40, 20)])
    rig.ok(command(CREATE, 1, fmt, 64, 32))
    pixels, entries = rig.guest_image(64, 32, seed=3)
    rig.attach(1, entries)
    rig.ok(command(TRANSFER, 0, 0, 64, 32, 0, 1))
    rig.ok(command(SET_SCANOUT, 8, 4, 40, 20, 0, 1))
    rig.device.take_damage(0)
    rig.ok(command(FLUSH, 13, 9, 6, 3, 1))
    damage = rig.device.take_damage(0)
    assert damage is not None and (damage.x, damage.y, damage.width, damage.height) == (5, 5, 6, 3)
    plane = rig.registry.get(PlaneKey(DOMID, 0, 0))
    assert plane is not None and plane.handle is not None
    channel = vu.DisplayChannel()
    channel.receive(struct.pack("<IIIQ", vu.GPU_GET_PROTOCOL_FEATURES, vu.FLAG_REPLY, 8, 0))
    drain(channel)
    channel.update(0, (5, 5, 6, 3), xrgb_pixels(plane.info, plane.handle.map(), damage))
    source = np.frombuffer(pixels, np.uint8).reshape(32, 64, 4)[9:12, 13:19]
    expected = source[..., xrgb_bytes].tobytes()
    assert drain(channel) == (
        struct.pack("<IIIIIIII", vu.GPU_UPDATE, 0, 20 + 6 * 3 * 4, 0, 5, 5, 6, 3) + expected
    )
