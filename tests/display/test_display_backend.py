"""The backend core with a real hypervisor: a backend domain and a raw frontend domain.

The frontend side is reduced to grants (buffers and page directories it builds by hand),
so every request, well-formed or not, reaches `DisplayDevice.handle` exactly as sent.
"""

import errno
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from display_backend_agents import Remote, start
from pvdisplay.hv.local.launcher import DomainLauncher
from pvdisplay.wire import displif, edid
from pvdisplay.wire.fourcc import XRGB8888, YUYV, fourcc_code
from rigs import PATIENCE

pytestmark = pytest.mark.processes

FRONTEND = 1
BACKEND = 0
XR24 = XRGB8888.fourcc


@dataclass
class Pair:
    host: DomainLauncher
    back: Remote
    front: Remote
    next_id: int = 0

    def send(self, request: displif.Request, connector: int = 0) -> displif.Response:
        response, events = self.send_with_events(request, connector)
        assert not events
        return response

    def send_with_events(
        self, request: displif.Request, connector: int = 0
    ) -> tuple[displif.Response, list[displif.PageFlipEvent]]:
        raw, events = self.back("request", connector, request.encode())
        response = displif.decode_response(raw)
        assert (response.id, response.operation) == (request.id, request.operation)
        return response, [displif.decode_event(e) for e in events]

    def rid(self) -> int:
        self.next_id += 1
        return self.next_id

    def fe_buffer(self, name: str, size: int, seed: int | None = None) -> int:
        """A frontend-allocated buffer of `size` bytes and its directory; returns the dir ref."""
        refs = self.front("share", name, displif.grefs_for_buffer(size))
        if seed is not None:
            self.front("pattern", name, 0, size, seed)
        first: int = self.front("directory", f"{name}-dir", refs)
        return first

    def create(
        self,
        cookie: int,
        geometry: tuple[int, int, int],
        size: int,
        directory: int,
        *,
        flags: int = 0,
        data_ofs: int = 0,
    ) -> displif.Response:
        """DBUF_CREATE of `geometry` (width, height, bpp)."""
        width, height, bpp = geometry
        return self.send(
            displif.DbufCreate(
                self.rid(), cookie, width, height, bpp, size, flags, directory, data_ofs
            )
        )


@pytest.fixture(scope="module")
def host() -> Iterator[DomainLauncher]:
    with DomainLauncher() as host:
        yield host


@pytest.fixture
def pair(host: DomainLauncher) -> Iterator[Pair]:
    back = start(host, "backend", domid=None)
    front = start(host, "frontend", str(back.domid))
    back("connect", front.domid, [(640, 480), (320, 200)], True)
    yield Pair(host, back, front)
    for remote in (front, back):
        remote.domain.kill()
        host.wait_released(remote.domid, PATIENCE)


def test_frontend_allocated_buffer_is_presented_without_a_copy(pair: Pair) -> None:
    width, height = 64, 32
    size = width * height * 4
    directory = pair.fe_buffer("fb", size, seed=1)
    assert pair.create(0x10, (width, height, 32), size, directory).status == 0
    assert pair.send(displif.FbAttach(pair.rid(), 0x10, 0x20, width, height, XR24)).status == 0
    config = displif.SetConfig(pair.rid(), 0x20, 0, 0, width, height, 32)
    assert pair.send(config).status == 0

    for expected_id in range(3):
        response, events = pair.send_with_events(displif.PageFlip(pair.rid(), 0x20))
        assert response.status == 0
        assert events == [displif.PageFlipEvent(expected_id, 0x20)]

    plane = pair.back("plane", pair.front.domid, 0)
    assert plane["fb_cookie"] == 0x20
    assert plane["fourcc"] == "XR24"
    assert (plane["width"], plane["height"], plane["stride"]) == (width, height, width * 4)
    assert plane["frame"] == 4  # the config and three flips
    assert plane["bytes_copied"] == 0
    assert pair.back("pixels", pair.front.domid, 0) == pair.front("read", "fb", 0, size)
    # The plane is the guest's pages: a later write shows without another flip.
    fresh = pair.front("pattern", "fb", 0, size, 2)
    assert pair.back("pixels", pair.front.domid, 0) == fresh
    assert pair.back("bytes_copied") == 0


def test_a_frame_being_copied_holds_up_only_its_own_connectors_flips(pair: Pair) -> None:
    width, height = 64, 32
    size = width * height * 4
    assert pair.create(0x10, (width, height, 32), size, pair.fe_buffer("fb", size)).status == 0
    assert pair.send(displif.FbAttach(pair.rid(), 0x10, 0x20, width, height, XR24)).status == 0
    pair.back("hold_frame", pair.front.domid, 0)  # connector 0's frame is being copied
    try:
        # The agent serves one call at a time: a flip that waited for connector 0's copy
        # would never answer (a TimeoutError), not just answer late.
        config = displif.SetConfig(pair.rid(), 0x20, 0, 0, width, height, 32)
        assert pair.send(config, connector=1).status == 0
        response, events = pair.send_with_events(displif.PageFlip(pair.rid(), 0x20), 1)
        assert (response.status, events) == (0, [displif.PageFlipEvent(0, 0x20)])
    finally:
        pair.back("let_go")


def test_copy_mode_copies_each_flip_and_counts_the_bytes(host: DomainLauncher) -> None:
    back = start(host, "backend")
    front = start(host, "frontend", str(back.domid))
    try:
        back("connect", front.domid, [(640, 480)], False, 2, True)
        pair = Pair(host, back, front)
        size = 100 * 50 * 4
        directory = pair.fe_buffer("fb", size, seed=3)
        assert pair.create(1, (100, 50, 32), size, directory).status == 0
        assert pair.send(displif.FbAttach(pair.rid(), 1, 2, 100, 50, XR24)).status == 0
        response, _ = pair.send_with_events(displif.PageFlip(pair.rid(), 2))
        assert response.status == 0
        first = pair.front("read", "fb", 0, size)
        plane = back("plane", front.domid, 0)
        assert plane["bytes_copied"] == size
        assert back("pixels", front.domid, 0) == first
        pair.front("pattern", "fb", 0, size, 4)
        assert back("pixels", front.domid, 0) == first  # a copy: unchanged until flipped
        pair.send_with_events(displif.PageFlip(pair.rid(), 2))
        assert back("pixels", front.domid, 0) == pair.front("read", "fb", 0, size)
        assert back("bytes_copied") == 2 * size
    finally:
        for remote in (front, back):
            remote.domain.kill()
            host.wait_released(remote.domid, PATIENCE)


def test_a_device_holds_no_more_pages_than_its_budget(host: DomainLauncher) -> None:
    back = start(host, "backend")
    front = start(host, "frontend", str(back.domid))
    try:
        back("connect", front.domid, [(640, 480)], True, 2, True, 100)  # be-alloc, copy
        pair = Pair(host, back, front)
        rid = pair.rid
        directory = pair.fe_buffer("fb", 40 * 4096)
        # The same granted pages, imported twice, count twice: the backend holds both.
        assert pair.create(1, (0, 0, 0), 40 * 4096, directory).status == 0
        assert pair.create(2, (0, 0, 0), 40 * 4096, directory).status == 0
        assert pair.create(3, (0, 0, 0), 40 * 4096, directory).status == -errno.ENOMEM
        be_dir = front("empty_directory", "be-dir", 20)
        alloc = displif.DBUF_FLG_REQ_ALLOC
        assert pair.create(4, (64, 320, 32), 20 * 4096, be_dir, flags=alloc).status == 0
        assert back("pages") == 100
        one_page = front("empty_directory", "one-dir", 1)
        assert pair.create(5, (16, 16, 32), 4096, one_page, flags=alloc).status == -errno.ENOMEM

        # Destroying a buffer gives its pages back.
        assert pair.send(displif.DbufDestroy(rid(), 1)).status == 0
        assert back("pages") == 60
        assert pair.create(3, (0, 0, 0), 40 * 4096, directory).status == 0
        # The copy of a frame counts too: 480 rows of 256 bytes are 30 pages.
        assert pair.send(displif.FbAttach(rid(), 3, 7, 64, 640, XR24)).status == 0
        assert pair.send(displif.PageFlip(rid(), 7)).status == -errno.ENOMEM
        assert pair.send(displif.DbufDestroy(rid(), 2)).status == 0
        response, events = pair.send_with_events(displif.PageFlip(rid(), 7))
        assert (response.status, len(events)) == (0, 1)
        assert back("pages") == 90
        back("close")
        usage = host.usage(back.domid)
        assert (usage["mapped_pages"], usage["memory_pages"]) == (0, 0)
    finally:
        for remote in (front, back):
            remote.domain.kill()
            host.wait_released(remote.domid, PATIENCE)


def test_directories_are_walked_as_far_as_buffer_sz_needs(pair: Pair) -> None:
    # 1100 pages need two directory pages.
    size = 1100 * 4096
    refs = pair.front("share", "big", 1100)
    pair.front("pattern", "big", 0, size, 5)
    good = pair.front("directory", "good-dir", refs)
    assert pair.create(1, (1100, 1024, 32), size, good).status == 0
    looping = pair.front("directory", "loop-dir", refs, True)
    assert pair.create(2, (1100, 1024, 32), size, looping).status == -errno.EINVAL
    # A one-page directory whose next pointer is itself.
    single = pair.front("directory", "self-dir", refs[:1], True)
    assert pair.create(3, (1, 1, 32), 4096, single).status == -errno.EINVAL
    # Too few pages behind buffer_sz: the directory ends early.
    short = pair.front("directory", "short-dir", refs[:1023])
    assert pair.create(4, (1100, 1024, 32), size, short).status == -errno.EINVAL
    # A directory ref the frontend never granted.
    assert pair.create(5, (1, 1, 32), 4096, 0xFFFF).status == -errno.EINVAL


@pytest.mark.parametrize(
    "case",
    [
        (64, 64, 32, 64 * 64 * 4 - 1, 0),  # buffer_sz smaller than the picture
        (64, 64, 32, 64 * 64 * 4, 1),  # data_ofs pushes the picture past the end
        (64, 0, 32, 4096, 0),  # partly zero geometry
        (1, 1, 32, 0, 0),  # empty buffer
        (0, 0, 0, 4096, 4096),  # PRIME data_ofs outside the buffer
        (8192, 8192, 32, 512 << 20, 0),  # beyond MAX_BUFFER_SIZE
    ],
)
def test_bad_sizes_are_invalid(pair: Pair, case: tuple[int, int, int, int, int]) -> None:
    width, height, bpp, size, data_ofs = case
    directory = pair.fe_buffer("fb", 64 * 64 * 4)
    response = pair.create(7, (width, height, bpp), size, directory, data_ofs=data_ofs)
    assert response.status == -errno.EINVAL


def test_cookies_unknown_duplicate_and_zero(pair: Pair) -> None:
    size = 16 * 16 * 4
    directory = pair.fe_buffer("fb", size)
    rid = pair.rid
    assert pair.create(0, (16, 16, 32), size, directory).status == -errno.EINVAL
    assert pair.create(9, (16, 16, 32), size, directory).status == 0
    assert pair.create(9, (16, 16, 32), size, directory).status == -errno.EEXIST
    assert pair.send(displif.DbufDestroy(rid(), 8)).status == -errno.ENOENT
    assert pair.send(displif.FbAttach(rid(), 8, 1, 16, 16, XR24)).status == -errno.ENOENT
    assert pair.send(displif.FbAttach(rid(), 9, 0, 16, 16, XR24)).status == -errno.EINVAL
    assert pair.send(displif.FbAttach(rid(), 9, 1, 16, 16, XR24)).status == 0
    assert pair.send(displif.FbAttach(rid(), 9, 1, 16, 16, XR24)).status == -errno.EEXIST
    assert pair.send(displif.FbDetach(rid(), 2)).status == -errno.ENOENT
    assert pair.send(displif.PageFlip(rid(), 2)).status == -errno.ENOENT
    config = displif.SetConfig(rid(), 2, 0, 0, 16, 16, 32)
    assert pair.send(config).status == -errno.ENOENT
    assert pair.send(displif.FbDetach(rid(), 1)).status == 0
    assert pair.send(displif.DbufDestroy(rid(), 9)).status == 0
    assert pair.send(displif.DbufDestroy(rid(), 9)).status == -errno.ENOENT
    # A destroyed cookie may be used again.
    assert pair.create(9, (16, 16, 32), size, directory).status == 0


def test_fb_attach_checks_format_and_pitch(pair: Pair) -> None:
    size = 32 * 32 * 2
    directory = pair.fe_buffer("fb", size)
    assert pair.create(1, (32, 32, 16), size, directory).status == 0
    rid = pair.rid
    bogus = fourcc_code("NV12")
    assert pair.send(displif.FbAttach(rid(), 1, 1, 32, 32, bogus)).status == -errno.EINVAL
    # 32 XRGB8888 pixels need 128 bytes a row; the buffer's pitch is 64.
    assert pair.send(displif.FbAttach(rid(), 1, 1, 32, 32, XR24)).status == -errno.EINVAL
    assert pair.send(displif.FbAttach(rid(), 1, 1, 32, 33, YUYV.fourcc)).status == -errno.EINVAL
    assert pair.send(displif.FbAttach(rid(), 1, 1, 32, 32, YUYV.fourcc)).status == 0
    assert pair.send(displif.FbAttach(rid(), 1, 2, 16, 16, XR24)).status == 0


def test_buffer_requests_belong_on_connector_zero(pair: Pair) -> None:
    directory = pair.fe_buffer("fb", 4096)
    request = displif.DbufCreate(pair.rid(), 1, 32, 32, 32, 4096, 0, directory, 0)
    assert pair.send(request, connector=1).status == -errno.EINVAL


def test_set_config_bounds_and_reset(pair: Pair) -> None:
    size = 640 * 480 * 4
    directory = pair.fe_buffer("fb", size, seed=6)
    assert pair.create(1, (640, 480, 32), size, directory).status == 0
    assert pair.send(displif.FbAttach(pair.rid(), 1, 5, 640, 480, XR24)).status == 0
    rid = pair.rid
    # Connector 1 is 320x200.
    assert pair.send(displif.SetConfig(rid(), 5, 0, 0, 321, 200, 32), 1).status == -errno.EINVAL
    assert pair.send(displif.SetConfig(rid(), 5, 10, 0, 320, 200, 32), 1).status == -errno.EINVAL
    assert pair.send(displif.SetConfig(rid(), 5, 0, 0, 320, 200, 16), 1).status == -errno.EINVAL
    assert pair.send(displif.SetConfig(rid(), 5, 0, 0, 0, 200, 32), 1).status == -errno.EINVAL
    assert pair.send(displif.SetConfig(rid(), 5, 0, 0, 320, 200, 32), 1).status == 0
    plane = pair.back("plane", pair.front.domid, 1)
    assert (plane["fb_cookie"], plane["width"], plane["height"]) == (5, 320, 200)
    assert pair.send(displif.SetConfig(rid(), 0, 0, 0, 0, 0, 0), 1).status == 0
    blank = pair.back("plane", pair.front.domid, 1)
    assert (blank["fb_cookie"], blank["buffer_id"]) == (0, "")
    # Zero cookie with a non-zero field is a set, of a framebuffer that does not exist.
    assert pair.send(displif.SetConfig(rid(), 0, 1, 0, 0, 0, 0), 1).status == -errno.ENOENT


def test_event_ids_count_per_connector(pair: Pair) -> None:
    size = 320 * 200 * 4
    directory = pair.fe_buffer("fb", size)
    assert pair.create(1, (320, 200, 32), size, directory).status == 0
    assert pair.send(displif.FbAttach(pair.rid(), 1, 5, 320, 200, XR24)).status == 0
    ids: dict[int, list[int]] = {0: [], 1: []}
    for connector in (0, 1, 1, 0, 1):
        response, events = pair.send_with_events(displif.PageFlip(pair.rid(), 5), connector)
        assert response.status == 0 and len(events) == 1
        ids[connector].append(events[0].id)
    assert ids == {0: [0, 1], 1: [0, 1, 2]}


def test_backend_allocated_buffer(host: DomainLauncher, pair: Pair) -> None:
    width, height = 300, 40
    size = width * height * 4
    pages = displif.grefs_for_buffer(size)
    directory = pair.front("empty_directory", "dir", pages)
    flags = displif.DBUF_FLG_REQ_ALLOC
    assert (
        pair.create(1, (width, height, 32), size, directory, flags=flags, data_ofs=4096).status
        == -errno.EINVAL
    )
    assert pair.create(1, (0, 0, 0), size, directory, flags=flags).status == -errno.EINVAL
    grants_before = host.usage(pair.back.domid)["granted_pages"]
    assert pair.create(1, (width, height, 32), size, directory, flags=flags).status == 0
    refs = pair.front("directory_refs", "dir", pages)
    assert len(set(refs)) == pages and 0 not in refs
    # The frontend draws into the backend's pages; the plane shows them.
    pair.front("map", "fb", refs)
    drawn = pair.front("pattern", "fb", 0, size, 7)
    assert pair.send(displif.FbAttach(pair.rid(), 1, 2, width, height, XR24)).status == 0
    response, events = pair.send_with_events(displif.PageFlip(pair.rid(), 2))
    assert response.status == 0 and events[0].fb_cookie == 2
    assert pair.back("pixels", pair.front.domid, 0) == drawn
    # Destroyed while the frontend still maps it: the grants outlive the request...
    assert pair.send(displif.DbufDestroy(pair.rid(), 1)).status == 0
    assert pair.back("plane", pair.front.domid, 0)["fb_cookie"] == 0
    assert host.usage(pair.back.domid)["granted_pages"] == grants_before + pages
    # ...and end once it unmaps.
    pair.front("unmap", "fb")
    assert host.usage(pair.back.domid)["granted_pages"] == grants_before


def test_backend_allocation_needs_be_alloc(host: DomainLauncher) -> None:
    back = start(host, "backend")
    front = start(host, "frontend", str(back.domid))
    try:
        back("connect", front.domid, [(640, 480)], False)
        pair = Pair(host, back, front)
        directory = front("empty_directory", "dir", 1)
        response = pair.create(1, (16, 16, 32), 1024, directory, flags=displif.DBUF_FLG_REQ_ALLOC)
        assert response.status == -errno.EINVAL
    finally:
        for remote in (front, back):
            remote.domain.kill()
            host.wait_released(remote.domid, PATIENCE)


def test_prime_import_is_pending_until_fb_attach(pair: Pair) -> None:
    width, height, data_ofs = 50, 20, 4096
    size = data_ofs + width * height * 4
    directory = pair.fe_buffer("fb", size, seed=8)
    assert pair.create(1, (0, 0, 0), size, directory, data_ofs=data_ofs).status == 0
    too_tall = displif.FbAttach(pair.rid(), 1, 2, width, height + 1, XR24)
    assert pair.send(too_tall).status == -errno.EINVAL
    assert pair.send(displif.FbAttach(pair.rid(), 1, 2, width, height, XR24)).status == 0
    response, _ = pair.send_with_events(displif.PageFlip(pair.rid(), 2))
    assert response.status == 0
    plane = pair.back("plane", pair.front.domid, 0)
    assert (plane["offset"], plane["stride"]) == (data_ofs, width * 4)
    expected = pair.front("read", "fb", data_ofs, width * height * 4)
    assert pair.back("pixels", pair.front.domid, 0) == expected


def test_get_edid_describes_the_connector(pair: Pair) -> None:
    refs = pair.front("share", "edid", displif.EDID_MAX_SIZE // 4096)
    directory = pair.front("directory", "edid-dir", refs)
    small = displif.GetEdid(pair.rid(), displif.EDID_MAX_SIZE - 1, directory)
    assert pair.send(small, 1).status == -errno.EINVAL
    response = pair.send(displif.GetEdid(pair.rid(), displif.EDID_MAX_SIZE, directory), 1)
    assert (response.status, response.edid_sz) == (0, 128)
    info = edid.parse_edid(pair.front("read", "edid", 0, response.edid_sz))
    assert (info.width, info.height, info.serial_string) == (320, 200, "conn1")


def test_get_edid_needs_protocol_2(host: DomainLauncher) -> None:
    back = start(host, "backend")
    front = start(host, "frontend", str(back.domid))
    try:
        back("connect", front.domid, [(640, 480)], False, 1)
        pair = Pair(host, back, front)
        refs = front("share", "edid", 8)
        directory = front("directory", "edid-dir", refs)
        response = pair.send(displif.GetEdid(pair.rid(), displif.EDID_MAX_SIZE, directory))
        assert response.status == -errno.EOPNOTSUPP
    finally:
        for remote in (front, back):
            remote.domain.kill()
            host.wait_released(remote.domid, PATIENCE)


def test_close_gives_back_every_mapping_and_grant(host: DomainLauncher, pair: Pair) -> None:
    size = 640 * 480 * 4
    directory = pair.fe_buffer("fb", size)
    assert pair.create(1, (640, 480, 32), size, directory).status == 0
    pages = displif.grefs_for_buffer(size)
    be_dir = pair.front("empty_directory", "be-dir", pages)
    flags = displif.DBUF_FLG_REQ_ALLOC
    assert pair.create(2, (640, 480, 32), size, be_dir, flags=flags).status == 0
    assert pair.send(displif.FbAttach(pair.rid(), 1, 1, 640, 480, XR24)).status == 0
    pair.send_with_events(displif.PageFlip(pair.rid(), 1))
    usage = host.usage(pair.back.domid)
    assert usage["mapped_pages"] >= pages and usage["granted_pages"] >= pages
    pair.back("close")
    assert pair.back("plane", pair.front.domid, 0) is None
    usage = host.usage(pair.back.domid)
    assert (usage["mapped_pages"], usage["granted_pages"], usage["memory_pages"]) == (0, 0, 0)


OPERATIONS = st.sampled_from([*(int(op) for op in displif.Operation), 0, 0x17, 0xFF])


@st.composite
def slots(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.binary(min_size=64, max_size=64)))
    raw[2] = draw(OPERATIONS)
    if draw(st.booleans()):
        # Small cookies and refs, so requests name things that exist.
        for offset in (8, 16, 40):
            raw[offset : offset + 4] = draw(st.integers(0, 4)).to_bytes(4, "little")
        raw[12:16] = bytes(4)
    return bytes(raw)


def test_any_slot_gets_a_response_with_its_id_and_operation(pair: Pair) -> None:
    directory = pair.fe_buffer("fb", 4 * 4096)
    assert pair.create(1, (64, 64, 32), 4 * 4096, directory).status == 0
    assert pair.send(displif.FbAttach(pair.rid(), 1, 2, 64, 64, XR24)).status == 0

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(slot=slots(), connector=st.sampled_from([0, 1]))
    def check(slot: bytes, connector: int) -> None:
        raw, events = pair.back("request", connector, slot)
        response = displif.decode_response(raw)
        assert (response.id, response.operation) == (slot[0] | slot[1] << 8, slot[2])
        assert response.status == 0 or -response.status in errno.errorcode
        assert len(events) == (
            1 if slot[2] == displif.Operation.PG_FLIP and not response.status else 0
        )

    check()


def test_flips_follow_set_config_moves_and_framebuffer_switches(pair: Pair) -> None:
    size = 160 * 100 * 4
    for cookie, name in ((1, "a"), (2, "b")):
        directory = pair.fe_buffer(name, size, seed=cookie)
        assert pair.create(cookie, (160, 100, 32), size, directory).status == 0
        fb = displif.FbAttach(pair.rid(), cookie, cookie + 10, 160, 100, XR24)
        assert pair.send(fb).status == 0
    rid = pair.rid
    assert pair.send(displif.SetConfig(rid(), 11, 0, 0, 160, 100, 32), 1).status == 0
    shown = []
    for cookie, position in ((12, (0, 0)), (11, (0, 0)), (12, (0, 0))):
        assert pair.send_with_events(displif.PageFlip(rid(), cookie), 1)[0].status == 0
        plane = pair.back("plane", pair.front.domid, 1)
        shown.append((plane["fb_cookie"], plane["buffer_id"], (plane["x"], plane["y"])))
        assert (plane["x"], plane["y"]) == position
    # Flipping between two framebuffers reuses one cached handle per framebuffer.
    assert shown[0][1] == shown[2][1] != shown[1][1]
    assert [fb for fb, _, _ in shown] == [12, 11, 12]
    # A SET_CONFIG that moves the picture shows on the very next flip of either buffer;
    # one that would leave the 320x200 connector changes nothing.
    assert pair.send(displif.SetConfig(rid(), 12, 100, 50, 160, 100, 32), 1).status == 0
    assert pair.send(displif.SetConfig(rid(), 12, 200, 50, 160, 100, 32), 1).status == -22
    for cookie in (11, 12):
        assert pair.send_with_events(displif.PageFlip(rid(), cookie), 1)[0].status == 0
        plane = pair.back("plane", pair.front.domid, 1)
        assert (plane["fb_cookie"], plane["x"], plane["y"]) == (cookie, 100, 50)
    assert pair.back("pixels", pair.front.domid, 1) == pair.front("read", "b", 0, size)
