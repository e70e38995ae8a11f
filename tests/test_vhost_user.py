"""vhost-user back-end protocol: a front-end written from vhost-user.rst drives `Backend`.

Guest memory is a real memfd passed the way QEMU passes it; kick/call are real eventfds.
The device is a recorder that pops and answers chains through the real `Virtqueue`.
"""

import contextlib
import errno
import mmap
import os
import struct
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvdisplay.planes import PlaneKey
from pvdisplay.virtio import VirtioError
from pvdisplay.virtio import vhost_user as vu
from pvdisplay.virtio.gpu import Cursor
from pvdisplay.virtio.gpu_wire import Format
from pvdisplay.virtio.memory import GuestMemoryMap
from pvdisplay.virtio.server import xrgb_pixels
from pvdisplay.virtio.virtqueue import VIRTIO_RING_F_EVENT_IDX, Virtqueue
from test_virtio_gpu import CREATE, DOMID, FLUSH, SET_SCANOUT, TRANSFER, Rig, command

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
) -> vu.Message:
    return vu.Message(request, vu.VERSION | flags, payload, fds or [])


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def mem_table(guest: Guest) -> vu.Message:
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


def start_ring(backend: vu.Backend, guest: Guest, index: int = 0) -> tuple[int, int]:
    """Set up ring `index` like QEMU does; returns its (kick, call) eventfds."""
    backend.handle(message(vu.SET_VRING_NUM, struct.pack("<II", index, QUEUE_SIZE)))
    backend.handle(message(vu.SET_VRING_BASE, struct.pack("<II", index, 0)))
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
        backend.handle(vu.Message(request, flags, payload, []))


def test_header_checks() -> None:
    assert vu.parse_header(struct.pack("<III", 1, 1, 0)) == (1, 1, 0)
    for bad in (struct.pack("<III", 1, 2, 0), struct.pack("<III", 1, 1, 1 << 20), b"\1\0"):
        with pytest.raises(vu.VhostUserError):
            vu.parse_header(bad)


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
