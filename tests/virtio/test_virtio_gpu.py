"""The virtio-gpu 2D device driven through real virtqueues by a spec-written guest driver.

Requests are packed with the layouts tests/test_virtio_layout.py proves against the uapi
header; answers are read back from the guest's writable buffers, and what scanouts show is
read through the planes registry's buffer handles, as outputs read it.
"""

import os
import resource
import struct
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_virtio_virtqueue import Driver

from pvdisplay.hv import PAGE_SIZE
from pvdisplay.planes.model import PlaneKey, PlaneRegistry
from pvdisplay.virtio import gpu_wire as wire
from pvdisplay.virtio.gpu import MAX_BACKING_ENTRIES, MAX_HOST_MEMORY, MAX_RESOURCES, GpuDevice
from pvdisplay.virtio.gpu_resource import GpuRect
from pvdisplay.virtio.gpu_wire import CtrlType, Format
from pvdisplay.wire.edid import parse_edid, serial_string_for
from pvdisplay.wire.layout import Layout

DOMID = 7
FENCE = wire.VIRTIO_GPU_FLAG_FENCE


def hdr(kind: int, flags: int = 0, fence_id: int = 0, ctx_id: int = 0, ring_idx: int = 0) -> bytes:
    return wire.CTRL_HDR.pack(kind, flags, fence_id, ctx_id, ring_idx)


def command(
    layout_kind: tuple[Layout, int], *values: int, flags: int = 0, fence_id: int = 0
) -> bytes:
    """A request: header, then the command's members packed with its proven layout."""
    layout, kind = layout_kind
    return hdr(kind, flags, fence_id) + layout.pack(*values)[wire.CTRL_HDR.struct.size :]


CREATE = (wire.RESOURCE_CREATE_2D, CtrlType.CMD_RESOURCE_CREATE_2D)
UNREF = (wire.RESOURCE_UNREF, CtrlType.CMD_RESOURCE_UNREF)
SET_SCANOUT = (wire.SET_SCANOUT, CtrlType.CMD_SET_SCANOUT)
FLUSH = (wire.RESOURCE_FLUSH, CtrlType.CMD_RESOURCE_FLUSH)
TRANSFER = (wire.TRANSFER_TO_HOST_2D, CtrlType.CMD_TRANSFER_TO_HOST_2D)
DETACH = (wire.RESOURCE_DETACH_BACKING, CtrlType.CMD_RESOURCE_DETACH_BACKING)
EDID = (wire.GET_EDID, CtrlType.CMD_GET_EDID)
CURSOR = (wire.UPDATE_CURSOR, CtrlType.CMD_UPDATE_CURSOR)
MOVE = (wire.UPDATE_CURSOR, CtrlType.CMD_MOVE_CURSOR)


class Rig:
    """A guest driver, its control and cursor queues, and the device under test."""

    def __init__(self, scanouts: list[tuple[int, int]] | None = None) -> None:
        self.control_driver = Driver(size=16)
        self.memory = self.control_driver.memory
        self.control = self.control_driver.queue()
        # The cursor queue lives in the same guest RAM, further up.
        self.cursor_driver = Driver(size=4)
        self.cursor_driver.ram = self.control_driver.ram
        self.cursor_driver.memory = self.memory
        base = 0x4000_0000 + 0x30000
        self.cursor_driver.desc_addr = base
        self.cursor_driver.avail_addr = base + 64
        self.cursor_driver.used_addr = base + 128
        self.cursor_driver.heap = base + 0x1000
        self.cursor = self.cursor_driver.queue()
        self.registry = PlaneRegistry()
        self.device = GpuDevice(
            self.memory, scanouts=scanouts or [(64, 32)], planes=self.registry, guest_domid=DOMID
        )

    def call(self, request: bytes, room: int = 2048) -> bytes:
        driver = self.control_driver
        driver.add([request], [room])
        assert self.device.handle_control(self.control)
        ((head, written),) = driver.used()
        chain_desc = struct.unpack_from(
            "<QIHH", driver.ram, driver.offset(driver.desc_addr) + 16 * ((head + 1) % driver.size)
        )
        return bytes(
            driver.ram[driver.offset(chain_desc[0]) : driver.offset(chain_desc[0]) + written]
        )

    def ok(self, request: bytes) -> None:
        assert answer_type(self.call(request)) == CtrlType.RESP_OK_NODATA

    def guest_image(
        self, width: int, height: int, seed: int
    ) -> tuple[bytes, list[tuple[int, int]]]:
        """Pixels in guest pages scattered out of order; returns them and the mem entries."""
        pixels = (
            np.random.default_rng(seed).integers(0, 256, width * height * 4, np.uint8).tobytes()
        )
        pages = [pixels[n : n + 4096] for n in range(0, len(pixels), 4096)]
        buffers = [self.control_driver.alloc(4096) for _ in pages]
        buffers.reverse()  # not contiguous in guest order
        for buffer, page in zip(buffers, pages, strict=False):
            off = self.control_driver.offset(buffer.addr)
            self.control_driver.ram[off : off + len(page)] = page
        return pixels, [(b.addr, len(p)) for b, p in zip(buffers, pages, strict=False)]

    def attach(self, resource_id: int, entries: list[tuple[int, int]]) -> bytes:
        body = b"".join(wire.MEM_ENTRY.pack(addr, length) for addr, length in entries)
        request = hdr(CtrlType.CMD_RESOURCE_ATTACH_BACKING) + struct.pack(
            "<II", resource_id, len(entries)
        )
        return self.call(request + body)

    def shown(self, scanout: int = 0) -> bytes:
        plane = self.registry.get(PlaneKey(DOMID, 0, scanout))
        assert plane is not None and plane.handle is not None
        info = plane.info
        with plane.handle.map() as mapping:
            rows = mapping.array()[info.offset : info.offset + info.stride * info.height]
            out = rows.reshape(info.height, info.stride)[:, : info.width * 4].tobytes()
            del rows
        return out


def answer_type(answer: bytes) -> int:
    kind: int = wire.CTRL_HDR.unpack(answer)[0]
    return kind


def test_display_info_lists_every_scanout() -> None:
    rig = Rig([(64, 32), (1024, 768)])
    answer = rig.call(hdr(CtrlType.CMD_GET_DISPLAY_INFO))
    assert len(answer) == wire.RESP_DISPLAY_INFO.struct.size
    assert answer_type(answer) == CtrlType.RESP_OK_DISPLAY_INFO
    modes = wire.RESP_DISPLAY_INFO.unpack(answer)
    assert modes[:12] == (0, 0, 64, 32, 1, 0, 0, 0, 1024, 768, 1, 0)
    assert set(modes[12:]) == {0}
    assert rig.device.display_info == [(64, 32), (1024, 768)]


def test_edid_describes_the_scanout() -> None:
    rig = Rig([(64, 32), (1024, 768)])
    answer = rig.call(command(EDID, 1))
    assert answer_type(answer) == CtrlType.RESP_OK_EDID
    (size,) = wire.RESP_EDID.unpack(answer)[:1]
    info = parse_edid(answer[32 : 32 + size])
    assert (info.width, info.height) == (1024, 768)
    assert info.serial_string == serial_string_for("virtio-gpu-0-1")
    assert answer_type(rig.call(command(EDID, 2))) == CtrlType.RESP_ERR_INVALID_PARAMETER


def test_frames_reach_the_planes_pixel_for_pixel() -> None:
    rig = Rig()
    blank = rig.registry.get(PlaneKey(DOMID, 0, 0))
    assert blank is not None and blank.handle is None and blank.info.mode_width == 64
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    pixels, entries = rig.guest_image(64, 32, seed=1)
    assert answer_type(rig.attach(1, entries)) == CtrlType.RESP_OK_NODATA
    rig.ok(command(TRANSFER, 0, 0, 64, 32, 0, 1))
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 0, 1))
    rig.ok(command(FLUSH, 0, 0, 64, 32, 1))
    plane = rig.registry.get(PlaneKey(DOMID, 0, 0))
    assert plane is not None
    assert (plane.info.fourcc, plane.info.fb_cookie, plane.info.width, plane.info.stride) == (
        "XR24",
        1,
        64,
        256,
    )
    assert plane.info.frame == 2
    assert rig.shown() == pixels


def test_partial_transfer_copies_only_its_rectangle() -> None:
    rig = Rig()
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    pixels, entries = rig.guest_image(64, 32, seed=2)
    rig.attach(1, entries)
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 0, 1))
    x, y, w, h = 5, 3, 20, 7
    rig.ok(command(TRANSFER, x, y, w, h, y * 256 + x * 4, 1))
    rig.ok(command(FLUSH, x, y, w, h, 1))
    expected = np.zeros((32, 256), np.uint8)
    source = np.frombuffer(pixels, np.uint8).reshape(32, 256)
    expected[y : y + h, x * 4 : (x + w) * 4] = source[y : y + h, x * 4 : (x + w) * 4]
    assert rig.shown() == expected.tobytes()
    plane = rig.registry.get(PlaneKey(DOMID, 0, 0))
    assert plane is not None and plane.info.bytes_copied == w * h * 4


def test_scanout_of_a_sub_rectangle_sets_the_plane_offset() -> None:
    rig = Rig()
    rig.ok(command(CREATE, 1, Format.R8G8B8X8_UNORM, 64, 32))
    rig.ok(command(SET_SCANOUT, 4, 2, 16, 8, 0, 1))
    plane = rig.registry.get(PlaneKey(DOMID, 0, 0))
    assert plane is not None
    assert (plane.info.fourcc, plane.info.offset, plane.info.width, plane.info.height) == (
        "XB24",
        2 * 256 + 16,
        16,
        8,
    )


def test_flushes_report_their_damage_per_scanout() -> None:
    rig = Rig([(16, 8), (64, 32)])
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    assert rig.device.take_damage(0) is None
    rig.ok(command(SET_SCANOUT, 10, 4, 16, 8, 0, 1))
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 1, 1))
    # A newly shown scanout is damaged whole, in its own coordinates.
    assert rig.device.take_damage(0) == GpuRect(0, 0, 16, 8)
    assert rig.device.take_damage(1) == GpuRect(0, 0, 64, 32)
    assert rig.device.take_damage(1) is None
    rig.ok(command(FLUSH, 20, 5, 3, 2, 1))
    # Scanout 0 shows (10, 4)-(26, 12) of the resource: the flush lands at (10, 1).
    assert rig.device.take_damage(0) == GpuRect(10, 1, 3, 2)
    assert rig.device.take_damage(1) == GpuRect(20, 5, 3, 2)
    # Flushes accumulate as their bounding box until taken; a part off-screen is clipped.
    rig.ok(command(FLUSH, 1, 1, 2, 2, 1))
    rig.ok(command(FLUSH, 24, 10, 8, 8, 1))
    assert rig.device.take_damage(0) == GpuRect(14, 6, 2, 2)
    assert rig.device.take_damage(1) == GpuRect(1, 1, 31, 17)
    rig.ok(command(FLUSH, 40, 20, 4, 4, 1))
    assert rig.device.take_damage(0) is None  # nothing of scanout 0 was flushed
    rig.ok(command(SET_SCANOUT, 0, 0, 0, 0, 1, 0))
    assert rig.device.take_damage(1) is None  # blank: nothing to show


def test_fenced_commands_echo_their_fence() -> None:
    rig = Rig()
    answer = rig.call(
        hdr(CtrlType.CMD_GET_DISPLAY_INFO, FENCE, fence_id=0x1234_5678_9ABC, ctx_id=3)
    )
    assert wire.CTRL_HDR.unpack(answer) == (
        CtrlType.RESP_OK_DISPLAY_INFO,
        FENCE,
        0x1234_5678_9ABC,
        3,
        0,
    )
    failed = rig.call(command(UNREF, 99, flags=FENCE, fence_id=5))
    assert wire.CTRL_HDR.unpack(failed) == (CtrlType.RESP_ERR_INVALID_RESOURCE_ID, FENCE, 5, 0, 0)
    unfenced = rig.call(hdr(CtrlType.CMD_GET_DISPLAY_INFO, 0, fence_id=9))
    assert wire.CTRL_HDR.unpack(unfenced)[1:3] == (0, 0)


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (command(CREATE, 0, Format.B8G8R8X8_UNORM, 8, 8), CtrlType.RESP_ERR_INVALID_RESOURCE_ID),
        (command(CREATE, 2, 999, 8, 8), CtrlType.RESP_ERR_INVALID_PARAMETER),
        (command(CREATE, 2, Format.B8G8R8X8_UNORM, 0, 8), CtrlType.RESP_ERR_INVALID_PARAMETER),
        (command(CREATE, 2, Format.B8G8R8X8_UNORM, 65535, 65535), CtrlType.RESP_ERR_OUT_OF_MEMORY),
        (command(CREATE, 1, Format.B8G8R8X8_UNORM, 8, 8), CtrlType.RESP_ERR_INVALID_RESOURCE_ID),
        (command(SET_SCANOUT, 0, 0, 8, 8, 1, 1), CtrlType.RESP_ERR_INVALID_SCANOUT_ID),
        (command(SET_SCANOUT, 0, 0, 8, 8, 0, 42), CtrlType.RESP_ERR_INVALID_RESOURCE_ID),
        (command(SET_SCANOUT, 60, 0, 8, 8, 0, 1), CtrlType.RESP_ERR_INVALID_PARAMETER),
        (command(FLUSH, 0, 0, 65, 1, 1), CtrlType.RESP_ERR_INVALID_PARAMETER),
        (command(TRANSFER, 0, 0, 8, 8, 0, 1), CtrlType.RESP_ERR_UNSPEC),  # no backing
        (command(DETACH, 1), CtrlType.RESP_ERR_UNSPEC),
        (command(DETACH, 3), CtrlType.RESP_ERR_INVALID_RESOURCE_ID),
        (hdr(CtrlType.CMD_GET_CAPSET_INFO), CtrlType.RESP_ERR_UNSPEC),
        (hdr(0x0200), CtrlType.RESP_ERR_UNSPEC),
        (hdr(CtrlType.CMD_SET_SCANOUT), CtrlType.RESP_ERR_UNSPEC),  # truncated
        (b"\x00" * 10, CtrlType.RESP_ERR_UNSPEC),
    ],
)
def test_bad_commands_get_error_answers(request_bytes: bytes, expected: CtrlType) -> None:
    rig = Rig()
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    assert answer_type(rig.call(request_bytes)) == expected
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 0, 1))  # the device still works


@pytest.mark.parametrize("count", [MAX_BACKING_ENTRIES + 1, 0xFFFF_FFFF])
def test_huge_backing_entry_counts_are_refused_before_any_entry_is_read(count: int) -> None:
    rig = Rig()
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    request = hdr(CtrlType.CMD_RESOURCE_ATTACH_BACKING) + struct.pack("<II", 1, count)
    assert answer_type(rig.call(request)) == CtrlType.RESP_ERR_UNSPEC
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 0, 1))  # the device still works


def test_backing_outside_guest_ram_and_short_backing_are_refused() -> None:
    rig = Rig()
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    assert answer_type(rig.attach(1, [(0x1000, 4096)])) == CtrlType.RESP_ERR_UNSPEC
    request = hdr(CtrlType.CMD_RESOURCE_ATTACH_BACKING) + struct.pack("<II", 1, 3)
    assert (
        answer_type(rig.call(request + wire.MEM_ENTRY.pack(0x4000_0000, 16)))
        == CtrlType.RESP_ERR_UNSPEC
    )
    _, entries = rig.guest_image(64, 16, seed=3)  # half the resource
    rig.attach(1, entries)
    assert answer_type(rig.attach(1, entries)) == CtrlType.RESP_ERR_UNSPEC  # already backed
    rig.ok(command(TRANSFER, 0, 0, 64, 16, 0, 1))
    assert (
        answer_type(rig.call(command(TRANSFER, 0, 0, 64, 17, 0, 1)))
        == CtrlType.RESP_ERR_INVALID_PARAMETER
    )
    rig.ok(command(DETACH, 1))
    assert answer_type(rig.call(command(TRANSFER, 0, 0, 64, 1, 0, 1))) == CtrlType.RESP_ERR_UNSPEC


def test_unref_blanks_the_scanouts_showing_it() -> None:
    rig = Rig([(64, 32), (64, 32)])
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 1, 1))
    assert rig.device.host_memory == 64 * 32 * 4
    rig.ok(command(UNREF, 1))
    plane = rig.registry.get(PlaneKey(DOMID, 0, 1))
    assert plane is not None and plane.handle is None and plane.info.fb_cookie == 0
    assert rig.device.host_memory == 0


def test_host_memory_is_bounded() -> None:
    rig = Rig()
    side = 4096
    per = side * side * 4
    for n in range(MAX_HOST_MEMORY // per):
        rig.ok(command(CREATE, n + 1, Format.B8G8R8X8_UNORM, side, side))
    answer = rig.call(command(CREATE, 100, Format.B8G8R8X8_UNORM, side, side))
    assert answer_type(answer) == CtrlType.RESP_ERR_OUT_OF_MEMORY


def test_host_memory_counts_whole_pages() -> None:
    """Each resource is its own memfd: a 1x1 one holds a page, not 4 bytes."""
    rig = Rig()
    side = 4096
    for n in range(MAX_HOST_MEMORY // (side * side * 4) - 1):
        rig.ok(command(CREATE, n + 1, Format.B8G8R8X8_UNORM, side, side))
    rig.ok(command(CREATE, 10, Format.B8G8R8X8_UNORM, side, side - 1))  # 4 pages short
    for n in range(4):
        rig.ok(command(CREATE, 20 + n, Format.B8G8R8X8_UNORM, 1, 1))
    assert rig.device.host_memory == MAX_HOST_MEMORY
    answer = rig.call(command(CREATE, 30, Format.B8G8R8X8_UNORM, 1, 1))
    assert answer_type(answer) == CtrlType.RESP_ERR_OUT_OF_MEMORY


def brief_call(rig: Rig, request: bytes) -> int:
    """The answer type of a request whose buffers are reused by the next (guest RAM
    holds only so many)."""
    heap = rig.control_driver.heap
    answer = answer_type(rig.call(request, room=64))
    rig.control_driver.heap = heap
    assert rig.control.in_flight == 0  # answered
    return answer


def create_until_refused(rig: Rig) -> tuple[int, int]:
    """CREATE 1x1 resources 1, 2, ... until one is refused: (how many were made, the
    refusal)."""
    for n in range(MAX_RESOURCES + 1):
        answer = brief_call(rig, command(CREATE, n + 1, Format.B8G8R8X8_UNORM, 1, 1))
        if answer != CtrlType.RESP_OK_NODATA:
            break
    else:
        raise AssertionError(f"{MAX_RESOURCES + 1} resources created")
    return n, answer


def unref_all(rig: Rig, count: int) -> None:
    for resource_id in range(1, count + 1):
        assert brief_call(rig, command(UNREF, resource_id)) == CtrlType.RESP_OK_NODATA


def still_works(rig: Rig, resource_id: int) -> None:
    rig.ok(command(CREATE, resource_id, Format.B8G8R8X8_UNORM, 64, 32))
    pixels, entries = rig.guest_image(64, 32, seed=9)
    assert answer_type(rig.attach(resource_id, entries)) == CtrlType.RESP_OK_NODATA
    rig.ok(command(TRANSFER, 0, 0, 64, 32, 0, resource_id))
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 0, resource_id))
    assert rig.shown() == pixels


def test_resource_count_is_bounded() -> None:
    rig = Rig()
    made, refusal = create_until_refused(rig)
    assert (made, refusal) == (MAX_RESOURCES, CtrlType.RESP_ERR_OUT_OF_MEMORY)
    assert rig.device.host_memory == MAX_RESOURCES * PAGE_SIZE
    unref_all(rig, made)
    still_works(rig, 1)


@pytest.fixture
def few_descriptors() -> Iterator[None]:
    """Room for 16 more open descriptors in this process, for the test's duration."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_running_out_of_descriptors_answers_out_of_memory(few_descriptors: None) -> None:
    rig = Rig()
    made, refusal = create_until_refused(rig)
    assert made < MAX_RESOURCES  # the descriptors ran out first
    assert refusal == CtrlType.RESP_ERR_OUT_OF_MEMORY
    unref_all(rig, made)
    still_works(rig, 1)


def test_cursor_queue_updates_and_moves_the_cursor() -> None:
    rig = Rig()
    rig.ok(command(CREATE, 5, Format.B8G8R8A8_UNORM, 64, 64))
    image, entries = rig.guest_image(64, 64, seed=4)
    rig.attach(5, entries)
    rig.ok(command(TRANSFER, 0, 0, 64, 64, 0, 5))
    rig.cursor_driver.add([command(CURSOR, 0, 10, 20, 5, 3, 4)], [])
    rig.device.handle_cursor(rig.cursor)
    cursor = rig.device.cursor
    assert cursor is not None
    assert (cursor.x, cursor.y, cursor.hot_x, cursor.hot_y, cursor.fourcc) == (10, 20, 3, 4, "AR24")
    assert cursor.image == image
    rig.cursor_driver.add([command(MOVE, 0, 30, 40, 0, 0, 0)], [])
    rig.device.handle_cursor(rig.cursor)
    assert rig.device.cursor is not None and (rig.device.cursor.x, rig.device.cursor.y) == (30, 40)
    assert rig.device.cursor.image == image
    assert [length for _, length in rig.cursor_driver.used()] == [0, 0]


def test_config_space_has_no_events_and_counts_scanouts() -> None:
    rig = Rig([(64, 32), (64, 32)])
    assert wire.CONFIG.unpack(rig.device.config_bytes()) == (0, 0, 2, 0)
    rig.device.write_config(4, wire.VIRTIO_GPU_EVENT_DISPLAY.to_bytes(4, "little"))
    rig.device.write_config(8, (5).to_bytes(4, "little"))  # num_scanouts is read-only
    assert wire.CONFIG.unpack(rig.device.config_bytes()) == (0, 0, 2, 0)


def test_guest_mode_change_follows_the_scanout_rectangle() -> None:
    """What Linux does when a KMS client sets 32x16 on a 64x32 connector and exits:
    a new resource, SET_SCANOUT to it, the fbdev one shown again, the client's unref'd."""
    rig = Rig([(64, 32)])
    key = PlaneKey(DOMID, 0, 0)
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    console, entries = rig.guest_image(64, 32, seed=1)
    rig.attach(1, entries)
    rig.ok(command(TRANSFER, 0, 0, 64, 32, 0, 1))
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 0, 1))
    rig.device.take_damage(0)

    rig.ok(command(CREATE, 2, Format.B8G8R8X8_UNORM, 32, 16))
    small, entries = rig.guest_image(32, 16, seed=2)
    rig.attach(2, entries)
    rig.ok(command(TRANSFER, 0, 0, 32, 16, 0, 2))
    rig.ok(command(SET_SCANOUT, 0, 0, 32, 16, 0, 2))
    plane = rig.registry.get(key)
    assert plane is not None
    info = plane.info
    assert (info.mode_width, info.mode_height, info.width, info.height) == (32, 16, 32, 16)
    assert (info.fb_cookie, info.stride) == (2, 32 * 4)
    assert rig.shown() == small
    assert rig.device.take_damage(0) == GpuRect(0, 0, 32, 16)
    # GET_DISPLAY_INFO and the EDID still describe the connector as configured.
    assert wire.RESP_DISPLAY_INFO.unpack(rig.call(hdr(CtrlType.CMD_GET_DISPLAY_INFO)))[2:4] == (
        64,
        32,
    )

    rig.ok(command(SET_SCANOUT, 0, 0, 0, 0, 0, 0))  # the client's framebuffer removed
    blank = rig.registry.get(key)
    assert blank is not None and blank.handle is None
    assert (blank.info.mode_width, blank.info.mode_height) == (64, 32)
    rig.ok(command(UNREF, 2))
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 0, 1))  # fbdev restores its mode
    rig.ok(command(FLUSH, 0, 0, 64, 32, 1))
    plane = rig.registry.get(key)
    assert plane is not None
    info = plane.info
    assert (info.mode_width, info.mode_height, info.width, info.height) == (64, 32, 64, 32)
    assert info.fb_cookie == 1 and rig.shown() == console
    assert rig.device.take_damage(0) == GpuRect(0, 0, 64, 32)
    assert rig.device.host_memory == 64 * 32 * 4


def test_close_removes_the_planes() -> None:
    rig = Rig([(64, 32), (64, 32)])
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    rig.ok(command(SET_SCANOUT, 0, 0, 64, 32, 0, 1))
    rig.device.close()
    assert rig.registry.planes() == []


@given(
    body=st.binary(max_size=96), kind=st.sampled_from([int(k) for k in CtrlType] + [0, 0xFFFF_FFFF])
)
@settings(max_examples=300, deadline=None)
def test_fuzzed_commands_always_get_a_well_formed_answer(body: bytes, kind: int) -> None:
    rig = Rig()
    rig.ok(command(CREATE, 1, Format.B8G8R8X8_UNORM, 64, 32))
    answer = rig.call(hdr(kind) + body)
    assert len(answer) >= wire.CTRL_HDR.struct.size
    assert answer_type(answer) in set(CtrlType)
    assert rig.control.broken is None
