"""The web viewer's sans-IO core: tile diffs, encodings, pacing, key map, page input."""

import asyncio
import contextlib
import io
import json
import logging
import struct
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import WSCloseCode
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from pvdisplay.ipc.buffers import SharedBuffer
from pvdisplay.outputs.feed.mirror import TILE, GuestMirror, Snapshot, TileMask
from pvdisplay.outputs.feed.rates import PlaneRate
from pvdisplay.outputs.feed.rect import Rect
from pvdisplay.outputs.web import keys, thumbnails, tiles
from pvdisplay.outputs.web.browser_input import MAX_CONTACTS, BrowserInput
from pvdisplay.outputs.web.names import DomainNames
from pvdisplay.outputs.web.server import WebViewer
from pvdisplay.outputs.web.session import REFRESH_DELAY, ViewerSession
from pvdisplay.outputs.web.tiles import Picture
from pvdisplay.planes.input_events import Key, PointerMove, TouchDown, TouchMove, TouchUp, Wheel
from pvdisplay.planes.model import PlaneInfo, PlaneKey, PlaneRegistry
from pvdisplay.planes.server import PlaneServer
from pvdisplay.store.aio import AsyncClient
from pvdisplay.store.server import XenStoreServer
from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.fourcc import PixelFormat
from rigs import PATIENCE

BTN_LEFT, BTN_RIGHT = 0x110, 0x111


def picture(rgb: np.ndarray, fmt: PixelFormat = fourcc.XRGB8888, pad: int = 0) -> Picture:
    """`rgb` as the guest would store it: XRGB8888 (bytes B G R X) or RGB565, rows padded."""
    height, width = rgb.shape[:2]
    if fmt == fourcc.XRGB8888:
        pixels = np.concatenate([rgb[..., ::-1], np.zeros((height, width, 1), np.uint8)], axis=2)
        rows = pixels.reshape(height, width * 4)
    else:
        wide = rgb.astype(np.uint16)
        value = (wide[..., 0] >> 3) << 11 | (wide[..., 1] >> 2) << 5 | wide[..., 2] >> 3
        rows = value.astype("<u2").view(np.uint8).reshape(height, width * 2)
    padded = np.zeros((height, rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    return Picture(fmt, width, height, padded.shape[1], padded.reshape(-1))


class Screen:
    """A connector's mirror as the feed keeps it: a new one per geometry, updated from
    each picture shown."""

    def __init__(self) -> None:
        self.mirror: GuestMirror | None = None

    def show(self, shown: Picture) -> Snapshot[GuestMirror]:
        if self.mirror is None or self.mirror.geometry != shown.geometry:
            self.mirror = GuestMirror(shown.fmt, shown.width, shown.height, shown.stride)
        self.mirror.update(shown.data)
        return self.mirror.snapshot()


def changed_rects(before: Picture | None, after: Picture) -> list[Rect]:
    screen = Screen()
    sent = None if before is None else screen.show(before)
    return tiles.mask_rects(changed_after(screen.show(after), sent), after.width, after.height)


def changed_after(snapshot: Snapshot[GuestMirror], sent: Snapshot[GuestMirror] | None) -> TileMask:
    """What a viewer holding `sent` is sent: everything when it holds none of the mirror."""
    mask = snapshot.changed_after(sent)
    return np.ones(snapshot.mirror.grid, bool) if mask is None else mask


def tile_truth(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per tile: does any pixel differ?"""
    height, width = before.shape[:2]
    rows, columns = -(-height // TILE), -(-width // TILE)
    differs = np.zeros((rows * TILE, columns * TILE), bool)
    differs[:height, :width] = np.any(before != after, axis=2)
    return np.asarray(differs.reshape(rows, TILE, columns, TILE).any(axis=(1, 3)))


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# -- key map, proven against the kernel header ------------------------------------------


def test_key_and_button_codes_match_linux_input_event_codes(
    check_linux_input_codes: Callable[[Iterable[tuple[str, int, str]]], None],
) -> None:
    check_linux_input_codes(
        [(name, value, code) for code, name, value in keys.KEY_TABLE]
        + [(name, value, f"button {button}") for button, name, value in keys.BUTTON_TABLE]
    )
    assert len(keys.LINUX_KEYS) == len(keys.KEY_TABLE)  # no KeyboardEvent.code listed twice


def test_a_wrong_key_code_fails_the_header_check(
    check_linux_input_codes: Callable[[Iterable[tuple[str, int, str]]], None],
) -> None:
    with pytest.raises(AssertionError, match="KEY_A is wrong"):
        check_linux_input_codes([("KEY_A", 31, "KEY_A is wrong")])


# -- tile diffs ------------------------------------------------------------------------

images = hnp.arrays(
    np.uint8,
    st.tuples(st.integers(1, 300), st.integers(1, 300), st.just(3)),
    elements=st.integers(0, 3),
)


def covered(rects: list[Rect], shape: tuple[int, ...]) -> np.ndarray:
    count = np.zeros(shape[:2], dtype=np.int32)
    for r in rects:
        assert r.width > 0 and r.height > 0
        assert r.x >= 0 and r.x + r.width <= shape[1] and r.y >= 0 and r.y + r.height <= shape[0]
        assert r.x % TILE == 0 and r.y % TILE == 0
        assert r.height <= tiles.BAND_ROWS
        count[r.y : r.y + r.height, r.x : r.x + r.width] += 1
    return count


@settings(max_examples=60, deadline=None)
@given(
    images, st.data(), st.sampled_from([fourcc.XRGB8888, fourcc.RGB565]), st.sampled_from([0, 2, 8])
)
def test_rects_cover_every_changed_pixel_once(
    before: np.ndarray, data: st.DataObject, fmt: PixelFormat, pad: int
) -> None:
    after = before.copy()
    height, width = before.shape[:2]
    for _ in range(data.draw(st.integers(0, 4))):
        y, x = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
        after[y : y + data.draw(st.integers(1, 80)), x : x + data.draw(st.integers(1, 80))] += 1
    if fmt == fourcc.RGB565:  # only the bits RGB565 keeps can change
        before, after = before << 3, after << 3
    rects = changed_rects(picture(before, fmt, pad), picture(after, fmt, pad))
    count = covered(rects, before.shape)
    assert count.max(initial=0) <= 1  # no pixel sent twice
    assert np.all(count[np.any(before != after, axis=2)] == 1)
    # Only tiles holding a change are sent.
    for r in rects:
        for ty in range(r.y, r.y + r.height, TILE):
            for tx in range(r.x, r.x + r.width, TILE):
                tile = np.s_[ty : ty + TILE, tx : tx + TILE]
                assert np.any(before[tile] != after[tile])


@settings(max_examples=20, deadline=None)
@given(images)
def test_a_first_frame_is_sent_whole_and_an_unchanged_one_not_at_all(image: np.ndarray) -> None:
    assert np.all(covered(changed_rects(None, picture(image)), image.shape) == 1)
    assert changed_rects(picture(image), picture(image.copy())) == []
    screen = Screen()
    same = screen.show(picture(image))
    assert tiles.mask_rects(changed_after(same, same), image.shape[1], image.shape[0]) == []
    # Another format or geometry is a new picture: sent whole.
    other = changed_rects(picture(image), picture(image, pad=8))
    assert np.all(covered(other, image.shape) == 1)


@settings(max_examples=40, deadline=None)
@given(
    images, st.data(), st.sampled_from([fourcc.XRGB8888, fourcc.RGB565]), st.sampled_from([0, 6])
)
def test_the_mirror_finds_exactly_the_changed_tiles_and_ends_equal_to_the_guest(
    first: np.ndarray, data: st.DataObject, fmt: PixelFormat, pad: int
) -> None:
    if fmt == fourcc.RGB565:
        first = first << 3  # only the bits RGB565 keeps
    height, width = first.shape[:2]
    images_shown = [first]
    for _ in range(data.draw(st.integers(1, 4))):
        after = images_shown[-1].copy()
        for _ in range(data.draw(st.integers(0, 3))):
            y, x = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
            size = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 70))
            after[y : y + size[0], x : x + size[1]] += 8
        images_shown.append(after)
    screen = Screen()
    snapshots = []
    for index, image in enumerate(images_shown):
        shown = picture(image, fmt, pad)
        mirror_before = screen.mirror
        previous = mirror_before.generation if mirror_before is not None else 0
        snapshots.append(screen.show(shown))
        assert screen.mirror is not None
        if index:  # each update reports exactly the tiles that differ
            step = screen.mirror.changed_since(previous)
            assert np.array_equal(step, tile_truth(images_shown[index - 1], image))
        assert np.array_equal(screen.mirror.data, shown.data)
    # A viewer holding any earlier frame learns every tile it lacks, and nothing else.
    last = snapshots[-1]
    for index, sent in enumerate(snapshots[:-1]):
        steps = np.zeros(last.mirror.grid, bool)
        for before, after in zip(images_shown[index:], images_shown[index + 1 :], strict=False):
            steps |= tile_truth(before, after)
        changed = changed_after(last, sent)
        assert np.array_equal(changed, steps)
        # Every tile where the held frame and the last differ is among them.
        assert not np.any(tile_truth(images_shown[index], images_shown[-1]) & ~changed)


def test_a_full_screen_change_becomes_full_width_bands() -> None:
    before = np.zeros((1080, 1920, 3), np.uint8)
    rects = changed_rects(picture(before), picture(before + 1))
    assert [(r.x, r.width) for r in rects] == [(0, 1920)] * 9
    assert [r.height for r in rects] == [128] * 8 + [56]


# -- encodings -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 70), st.integers(1, 70), st.just(3))))
def test_png_is_exact(pixels: np.ndarray) -> None:
    assert np.array_equal(decode(tiles.encode_png(pixels)), pixels)


def test_flat_content_goes_lossless_and_noise_goes_jpeg() -> None:
    rng = np.random.default_rng(1)
    image = np.zeros((256, 256, 3), np.uint8)
    image[:, :128] = (200, 30, 30)
    # Photo-like: a smooth gradient with sensor-like noise.
    gradient = np.linspace(0, 200, 128)[None, :, None] + np.linspace(0, 40, 256)[:, None, None]
    noise = rng.integers(0, 24, (256, 128, 3))
    image[:, 128:] = (gradient + noise).astype(np.uint8)
    flat = tiles.encode_rect(picture(image), Rect(0, 0, 128, 256), 80)
    noisy = tiles.encode_rect(picture(image), Rect(128, 0, 128, 256), 80)
    small_flat = tiles.encode_rect(picture(image), Rect(0, 0, 64, 20), 80)
    assert (flat.kind, noisy.kind, small_flat.kind) == ("png", "jpeg", "png")
    assert np.array_equal(decode(flat.data), image[:, :128])
    # Whichever wins is smaller than the other would have been.
    assert len(noisy.data) < len(tiles.encode_png(image[:, 128:]))
    assert len(flat.data) < len(tiles.encode_jpeg(np.ascontiguousarray(image[:, :128]), 80))
    jpeg = decode(noisy.data).astype(int)
    assert np.abs(jpeg - image[:, 128:]).mean() < 12  # lossy, but the same picture


def test_lossless_quality_never_uses_jpeg() -> None:
    noise = np.random.default_rng(2).integers(0, 256, (200, 100, 3), dtype=np.uint8)
    tile = tiles.encode_rect(picture(noise, pad=4), Rect(0, 64, 64, 128), tiles.LOSSLESS)
    assert tile.kind == "png"
    assert np.array_equal(decode(tile.data), noise[64:192, :64])


def test_quality_parsing() -> None:
    assert tiles.parse_quality("lossless") == "lossless"
    assert tiles.parse_quality("75") == 75
    for bad in ("0", "101", "high", ""):
        with pytest.raises(ValueError, match="quality"):
            tiles.parse_quality(bad)


def test_frame_message_layout() -> None:
    image = np.zeros((64, 128, 3), np.uint8)
    encoded = [
        tiles.encode_rect(picture(image), Rect(0, 0, 64, 64), 80),
        tiles.Tile(Rect(64, 0, 64, 64), "jpeg", b"xyz"),
    ]
    message = tiles.pack_frame({"seq": 3}, encoded)
    (length,) = struct.unpack_from("<I", message)
    header = json.loads(message[4 : 4 + length])
    assert header["seq"] == 3
    assert header["tiles"] == [
        [0, 0, 64, 64, encoded[0].kind, len(encoded[0].data)],
        [64, 0, 64, 64, "jpeg", 3],
    ]
    assert message[4 + length :] == encoded[0].data + b"xyz"


# -- pacing ----------------------------------------------------------------------------


def frame(value: int) -> Picture:
    image = np.zeros((100, 100, 3), np.uint8)
    image[: value + 1, :10] = value
    return picture(image)


def test_at_most_window_frames_unacknowledged_and_the_newest_sent_next() -> None:
    session = ViewerSession(tiles.LOSSLESS, window=2)
    screen = Screen()
    first = session.plan(screen.show(frame(0)), 0.0)
    assert first is not None and first.seq == 1
    assert first.rects == [Rect(0, 0, 100, 100)]  # the whole frame
    second = session.plan(screen.show(frame(1)), 0.0)
    assert second is not None and second.seq == 2
    assert second.rects == [Rect(0, 0, 64, 64)]  # only the tile that changed
    assert not session.can_send()
    session.ack(5)  # a future ack cannot widen the window
    assert not session.can_send()
    session.ack(1)
    assert session.can_send() and session.in_flight == 1
    # Frames 2..9 were flipped meanwhile; only the newest is diffed and sent.
    latest = session.plan(screen.show(frame(9)), 0.0)
    assert latest is not None and latest.seq == 3
    session.ack(1)  # stale
    assert session.in_flight == 2
    assert session.plan(screen.show(frame(9)), 0.0) is None  # nothing changed: nothing to send


def test_reset_sends_the_next_frame_whole() -> None:
    session = ViewerSession(80)
    screen = Screen()
    session.plan(screen.show(frame(0)), 0.0)
    session.reset()
    again = session.plan(screen.show(frame(0)), 0.0)
    assert again is not None and again.rects == [Rect(0, 0, 100, 100)]


def test_full_screen_motion_goes_as_one_jpeg_then_is_refreshed_once_still() -> None:
    flat = np.zeros((300, 400, 3), np.uint8)
    flat[:, 200:] = (10, 120, 240)
    moved = flat.copy()
    moved[:, :290] = np.linspace(0, 250, 290)[None, :, None]  # 5 of 7 tile columns
    session = ViewerSession(80)
    screen = Screen()
    first = session.plan(screen.show(picture(flat)), 0.0)
    assert first is not None and first.motion and first.rects == [Rect(0, 0, 400, 300)]
    assert session.encode(first, first.rects[0]).kind == "jpeg"  # though PNG is smaller
    assert session.refresh_in(0.1) == pytest.approx(REFRESH_DELAY - 0.1)
    second = session.plan(screen.show(picture(moved)), 1.0)
    assert second is not None and second.motion and second.rects == [Rect(0, 0, 320, 300)]
    tile = session.encode(second, second.rects[0])
    assert np.abs(decode(tile.data).astype(int) - moved[:, :320]).mean() < 12
    assert (
        session.plan(screen.show(picture(moved)), 1.0 + REFRESH_DELAY / 2) is None
    )  # not still long
    refresh = session.plan(screen.show(picture(moved)), 1.0 + REFRESH_DELAY)
    assert refresh is not None and not refresh.motion
    assert np.all(covered(refresh.rects, flat.shape) == 1)  # all of it was sent as motion
    flat_band = session.encode(refresh, Rect(320, 0, 80, 300))
    assert flat_band.kind == "png" and np.array_equal(decode(flat_band.data), moved[:, 320:])
    assert (
        session.refresh_in(5.0) is None and session.plan(screen.show(picture(moved)), 5.0) is None
    )


def test_small_changes_and_lossless_quality_never_go_as_motion() -> None:
    before = np.zeros((300, 400, 3), np.uint8)
    session = ViewerSession(80)
    screen = Screen()
    session.plan(screen.show(picture(before)), 0.0)
    after = before.copy()
    after[:100, :100] = 9  # 4 of 35 tiles
    small = session.plan(screen.show(picture(after)), 1.0)
    assert small is not None and not small.motion
    assert small.rects == [Rect(0, 0, 128, 128)]
    lossless = ViewerSession(tiles.LOSSLESS)
    screen = Screen()
    whole = lossless.plan(screen.show(picture(before)), 0.0)
    assert whole is not None and not whole.motion and len(whole.rects) == 3
    assert all(lossless.encode(whole, r).kind == "png" for r in whole.rects)
    assert lossless.refresh_in(1.0) is None


def test_refresh_covers_only_motion_tiles_not_sent_again_since() -> None:
    before = np.zeros((128, 128, 3), np.uint8)
    session = ViewerSession(80)
    screen = Screen()
    session.plan(screen.show(picture(before)), 0.0)  # sent whole as motion
    after = before.copy()
    after[:64, :64] = 50  # that tile is sent again with the usual choice
    assert session.plan(screen.show(picture(after)), 0.1) is not None
    refresh = session.plan(screen.show(picture(after)), 1.0)
    assert refresh is not None
    assert refresh.rects == [Rect(64, 0, 64, 64), Rect(0, 64, 128, 64)]


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(fourcc.FORMATS[:4]),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(0, 3),
    st.data(),
)
def test_jpeg_from_the_guest_bytes_shows_what_the_rgb_conversion_shows(
    fmt: PixelFormat, blocks_x: int, blocks_y: int, pad_pixels: int, data: st.DataObject
) -> None:
    """XRGB8888/ARGB8888/RGB888 go to the JPEG encoder as they are, the others through
    RGB: either way the picture is `to_rgb`'s.

    What 4:2:0 JPEG at quality 95 promises for flat 16x16 blocks on its MCU grid: each
    block is one DC value per 8x8 DCT block (luma and chroma), so inside a block only the
    colour conversion's rounding is lost (half a level into YCbCr, at most 1.772 times
    that back), at most 2 levels per channel. The pixel on each side of a block edge is
    not promised anything: the decoder's chroma upsampling blends a quarter of the
    neighbouring block's chroma into it, up to about 110 levels for opposite colours."""
    size = fmt.bytes_per_pixel
    colours = data.draw(hnp.arrays(np.uint8, (blocks_y, blocks_x, size)))
    pixels = colours.repeat(16, axis=0).repeat(16, axis=1)
    height, width = pixels.shape[:2]
    stride = (width + pad_pixels) * size
    rows = np.zeros((height, stride), np.uint8)
    rows[:, : width * size] = pixels.reshape(height, -1)
    guest = Picture(fmt, width, height, stride, rows.reshape(-1))
    rect = Rect(0, 16 if height > 16 else 0, width, height - 16 if height > 16 else height)
    tile = tiles.encode_motion(guest, rect, 95)
    error = np.abs(decode(tile.data).astype(int) - guest.rgb(rect).astype(int))
    rows_in, columns_in = (np.arange(n) % 16 for n in error.shape[:2])
    inside = ((rows_in > 0) & (rows_in < 15))[:, None] & ((columns_in > 0) & (columns_in < 15))
    assert error[inside].max() <= 2


# -- page input ------------------------------------------------------------------------


def test_mouse_keys_and_wheel_become_guest_events_clamped_to_the_connector() -> None:
    page = BrowserInput(640, 480)
    events = page.decode(
        {
            "events": [
                {"t": "move", "x": 10.7, "y": 20.2},
                {"t": "button", "button": 2, "down": True, "x": 700, "y": -5},
                {"t": "key", "code": "KeyA", "down": True},
                {"t": "key", "code": "LaunchMail", "down": True},
                {"t": "wheel", "steps": -1000},
            ]
        }
    )
    assert events == [
        PointerMove(10, 20),
        PointerMove(639, 0),
        Key(BTN_RIGHT, True),
        Key(30, True),
        Wheel(-100),
    ]


def test_touch_pointers_get_the_lowest_free_contact_slots() -> None:
    page = BrowserInput(100, 100)

    def touch(phase: str, pointer: int, x: float = 1, y: float = 2) -> list[object]:
        return list(
            page.decode({"events": [{"t": "touch", "phase": phase, "id": pointer, "x": x, "y": y}]})
        )

    assert touch("down", 17) == [TouchDown(0, 1, 2)]
    assert touch("down", 4) == [TouchDown(1, 1, 2)]
    assert touch("move", 4, 50, 60) == [TouchMove(1, 50, 60)]
    assert touch("up", 17) == [TouchUp(0)]
    assert touch("down", 99) == [TouchDown(0, 1, 2)]
    assert touch("move", 12345) == []  # never went down
    for pointer in range(1000, 1000 + MAX_CONTACTS):
        touch("down", pointer)
    assert touch("down", 5000) == []  # more fingers than contacts


@pytest.mark.parametrize(
    "event",
    [
        "key",
        {"t": "key", "code": 3, "down": True},
        {"t": "move", "x": float("nan"), "y": 1},
        {"t": "move", "x": True, "y": 1},
        {"t": "button", "button": 0, "down": 1, "x": 1, "y": 1},
        {"t": "wheel", "steps": 1.5},
        {"t": "touch", "phase": "hover", "id": 1, "x": 1, "y": 1},
        {"t": "teleport"},
    ],
)
def test_malformed_input_is_refused_whole(event: object) -> None:
    page = BrowserInput(100, 100)
    with pytest.raises(ProtocolError):
        page.decode({"events": [{"t": "touch", "phase": "down", "id": 1, "x": 1, "y": 1}, event]})
    # The touch before the bad event was not taken either.
    assert page.decode({"events": [{"t": "touch", "phase": "down", "id": 2, "x": 1, "y": 1}]}) == [
        TouchDown(0, 1, 1)
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
        ),
        max_leaves=20,
    )
)
def test_any_json_from_a_page_is_events_or_protocol_error(message: object) -> None:
    page = BrowserInput(320, 200)
    try:
        events = page.decode({"events": message})
    except ProtocolError:
        return
    for event in events:
        if isinstance(event, PointerMove | TouchDown | TouchMove):
            assert 0 <= event.x < 320 and 0 <= event.y < 200


# -- index figures ---------------------------------------------------------------------


def test_frame_rate_and_flip_latency_from_changes() -> None:
    rate = PlaneRate()
    info = PlaneInfo(1, 0, 0, "main", 640, 480, fb_cookie=5, presented_at=100.0)
    for step in range(11):
        rate.update(
            PlaneInfo(**{**info.to_json(), "frame": 2 * step}),  # type: ignore[arg-type]
            now=10.0 + step * 0.05,
            wall=100.004,
        )
    assert rate.fps(10.5) == pytest.approx(40.0)
    assert rate.latency == pytest.approx(0.004)
    assert rate.fps(12.0) == 0.0  # nothing flipped for a while: not moving


# -- who may connect ----------------------------------------------------------------------


def test_other_sites_and_rebound_names_are_refused(tmp_path: Path) -> None:
    async def statuses() -> list[int]:
        viewer = WebViewer(tmp_path / "no-backend.sock", port=0)
        await viewer.start()
        try:
            async with aiohttp.ClientSession() as client:
                base = f"http://127.0.0.1:{viewer.port}"
                headers: list[dict[str, str]] = [
                    {},
                    {"Origin": base},
                    {"Origin": "http://evil.example"},
                    {
                        "Host": f"evil.example:{viewer.port}",
                        "Origin": f"http://evil.example:{viewer.port}",
                    },
                ]
                results = []
                for header in headers:
                    async with client.get(f"{base}/api/planes", headers=header) as reply:
                        results.append(reply.status)
                return results
        finally:
            await viewer.close()

    assert asyncio.run(statuses()) == [200, 200, 403, 403]


def test_a_viewer_beyond_loopback_warns_naming_the_port_it_took(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def warnings_when_listening_on(host: str) -> list[str]:
        caplog.clear()
        viewer = WebViewer(tmp_path / "no-backend.sock", host, port=0)
        await viewer.start()
        await viewer.close()
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    caplog.set_level(logging.WARNING)
    exposed = asyncio.run(warnings_when_listening_on("0.0.0.0"))
    assert len(exposed) == 1
    assert exposed[0].startswith(
        "the web viewer listens beyond this machine without authentication: anyone who "
        "reaches 0.0.0.0:"
    )
    assert ":0 " not in exposed[0]  # the port bound, not the 0 asked for
    assert exposed[0].endswith("listen on 127.0.0.1 and reach it through an SSH tunnel")
    assert asyncio.run(warnings_when_listening_on("127.0.0.1")) == []


def test_closing_the_viewer_tells_its_open_pages_it_is_going(tmp_path: Path) -> None:
    async def close_codes() -> list[int | None]:
        viewer = WebViewer(tmp_path / "no-backend.sock", port=0)
        await viewer.start()
        base = f"ws://127.0.0.1:{viewer.port}/ws"
        async with aiohttp.ClientSession() as client:
            pages = [
                await client.ws_connect(f"{base}/index"),
                await client.ws_connect(f"{base}/view/1/0/0"),
            ]
            for page in pages:
                await page.receive()  # served: the listing, or the connector's state
            # The pages read on, as a browser does, so they answer the close at once.
            closes = [asyncio.create_task(page.receive()) for page in pages]
            await asyncio.wait_for(viewer.close(), PATIENCE)  # bounded so that a hang fails
            assert [(await close).type for close in closes] == [aiohttp.WSMsgType.CLOSE] * 2
            return [page.close_code for page in pages]

    assert asyncio.run(close_codes()) == [WSCloseCode.GOING_AWAY] * 2


def test_thumbnails_are_kept_fresh_only_while_an_index_page_asks_for_them(
    tmp_path: Path,
) -> None:
    def refreshing() -> bool:
        """The task that remakes thumbnails runs."""
        refresh = thumbnails.Thumbnails._refresh_forever.__code__
        coroutines = [task.get_coro() for task in asyncio.all_tasks()]
        return any(isinstance(c, types.CoroutineType) and c.cr_code is refresh for c in coroutines)

    async def watchers_seen() -> list[object]:
        viewer = WebViewer(tmp_path / "no-backend.sock", port=0)
        await viewer.start()
        seen: list[object] = [viewer.thumbnails.watchers, refreshing()]
        try:
            async with aiohttp.ClientSession() as client:
                base = f"ws://127.0.0.1:{viewer.port}/ws/index"
                async with client.ws_connect(base) as index:
                    await index.receive_json()  # served: inside `watched` by now
                    seen += [viewer.thumbnails.watchers, refreshing()]
                    async with client.ws_connect(f"{base}?thumbnails=0") as wall:
                        await wall.receive_json()
                        seen.append(viewer.thumbnails.watchers)
                while viewer.thumbnails.watchers:  # the page's handler leaves `watched`
                    await asyncio.sleep(0.01)
                seen.append(refreshing())
                async with client.get(f"http://127.0.0.1:{viewer.port}/thumb/1/0/0") as reply:
                    seen.append(reply.status)  # nothing made for a connector never shown
        finally:
            await viewer.close()
        return seen

    # Bounded: an index page that never leaves `watched` fails here, not at pytest-timeout.
    seen = asyncio.run(asyncio.wait_for(watchers_seen(), PATIENCE))
    assert seen == [0, False, 1, True, 1, False, 404]


@contextlib.contextmanager
def shown_picture(path: Path) -> Iterator[PlaneRegistry]:
    """A planes server at `path` publishing one 64x48 XRGB8888 picture as domain 1's."""
    registry = PlaneRegistry()
    buffer = SharedBuffer.allocate(4)
    with buffer.map(writable=True) as mapping:
        mapping.array()[: 64 * 48 * 4] = np.arange(64 * 48 * 4, dtype=np.uint8)
    registry.publish(
        PlaneInfo(1, 0, 0, "id0", 64, 48, fb_cookie=5, fourcc="XR24", width=64, height=48,
                  stride=256, buffer_id=buffer.id, frame=1),
        buffer,
    )  # fmt: skip
    server = PlaneServer(registry, path)
    server.start()
    try:
        yield registry
    finally:
        server.close()
        buffer.close()


def test_a_restarted_viewer_never_gives_a_thumbnail_a_version_pages_have_cached(
    tmp_path: Path,
) -> None:
    async def first_thumbnail_version() -> str:
        viewer = WebViewer(tmp_path / "planes.sock", port=0)
        await viewer.start()
        try:
            async with (
                aiohttp.ClientSession() as client,
                client.ws_connect(f"ws://127.0.0.1:{viewer.port}/ws/index") as index,
            ):
                while not (planes := (await index.receive_json())["planes"]) or not (
                    version := planes[0]["thumb"]
                ):
                    pass
                return str(version)
        finally:
            await viewer.close()

    async def versions() -> list[str]:
        with shown_picture(tmp_path / "planes.sock"):
            # Each viewer stands for a process of its own: the same picture, restarted.
            return [await first_thumbnail_version() for _ in range(2)]

    first, second = asyncio.run(versions())
    assert first != second


def test_a_thumbnail_that_fails_once_is_made_again_and_the_index_closes_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made = thumbnails.make_thumbnail
    calls: list[int] = []

    def fails_first(picture: Picture) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a picture Pillow cannot read")
        return made(picture)

    monkeypatch.setattr(thumbnails, "make_thumbnail", fails_first)

    async def scenario() -> int:
        viewer = WebViewer(tmp_path / "planes.sock", port=0)
        await viewer.start()
        try:
            async with aiohttp.ClientSession() as client:
                index = await client.ws_connect(f"ws://127.0.0.1:{viewer.port}/ws/index")

                async def thumbnail_shown() -> None:
                    while not any(p["thumb"] for p in (await index.receive_json())["planes"]):
                        pass

                await asyncio.wait_for(thumbnail_shown(), PATIENCE)  # bounded: a hang fails
                await index.close()
                while viewer.thumbnails.watchers:  # the page's handler leaves `watched`
                    await asyncio.sleep(0.01)
        finally:
            await viewer.close()
        return len(calls)

    async def shown() -> int:
        with shown_picture(tmp_path / "planes.sock"):
            return await scenario()

    assert asyncio.run(shown()) >= 2
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in failures] == ["thumbnail failed"]


# -- domain names for the index ------------------------------------------------------------


def test_domain_names_come_from_xenstore_and_are_read_again_for_a_new_domain(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        names = DomainNames(tmp_path / "xs" / "socket_ro")
        assert await names.lookup([1]) == {}  # no xenstored (yet): no names, no error
        async with (
            XenStoreServer(tmp_path / "xs") as server,
            await AsyncClient.connect(server.socket_path) as dom0,
        ):
            await dom0.write("/local/domain/1/name", "alpha")
            assert await names.lookup([1, 2]) == {1: "alpha"}  # 2 has no name node
            await dom0.write("/local/domain/2/name", "beta")
            await dom0.write("/local/domain/1/name", "alpha-2")
            # Read once per domain while it has planes.
            assert await names.lookup([1, 2]) == {1: "alpha", 2: "beta"}
            # Domain 1's planes went; a domain with its id later is read again.
            assert await names.lookup([2]) == {2: "beta"}
            assert await names.lookup([1, 2]) == {1: "alpha-2", 2: "beta"}
        # xenstored gone: the names known stay, a new domain is nameless, nothing raises.
        assert await names.lookup([2, 3]) == {2: "beta"}
        await names.close()

    asyncio.run(scenario())


def test_a_connector_page_alone_shows_the_name_of_a_new_domain_given_an_old_domid(
    tmp_path: Path,
) -> None:
    key = PlaneKey(1, 0, 0)
    registry = PlaneRegistry()

    async def names_shown() -> list[tuple[str, str]]:
        server = PlaneServer(registry, tmp_path / "planes.sock")
        server.start()
        async with (
            XenStoreServer(tmp_path / "xs") as xenstored,
            await AsyncClient.connect(xenstored.socket_path) as dom0,
        ):
            viewer = WebViewer(server.path, port=0, xenstore_socket=tmp_path / "xs" / "socket_ro")
            await viewer.start()
            try:
                async with (
                    aiohttp.ClientSession() as client,
                    client.ws_connect(f"ws://127.0.0.1:{viewer.port}/ws/view/1/0/0") as page,
                ):

                    async def status(state: str) -> tuple[str, str]:
                        while (message := await page.receive_json())["state"] != state:
                            pass
                        return message["state"], message["name"]

                    await dom0.write("/local/domain/1/name", "alpha")
                    registry.publish(PlaneInfo(*key, "id0", 64, 48), None)
                    shown = [await status("blank")]
                    registry.remove(key)  # alpha is destroyed; a new domain 1 comes
                    shown.append(await status("disconnected"))
                    await dom0.write("/local/domain/1/name", "beta")
                    registry.publish(PlaneInfo(*key, "id0", 64, 48), None)
                    shown.append(await status("blank"))
                    return shown
            finally:
                await viewer.close()
                server.close()

    assert asyncio.run(names_shown()) == [
        ("blank", "alpha"),
        ("disconnected", ""),
        ("blank", "beta"),
    ]


def test_a_thumbnail_is_the_picture_box_filtered_to_fit_and_small_pictures_stay_whole() -> None:
    checkers = np.indices((1080, 1920)).sum(axis=0) % 2 * 255  # one-pixel black and white
    rgb = np.repeat(checkers.astype(np.uint8)[..., None], 3, axis=2)
    with Image.open(io.BytesIO(thumbnails.make_thumbnail(picture(rgb)))) as image:
        shown = np.asarray(image.convert("RGB"), dtype=float)
    assert shown.shape == (180, 320, 3)  # 1920x1080 / 6
    assert abs(shown.mean() - 127.5) < 3 and shown.std() < 3  # averaged, not sampled
    for fmt in (fourcc.XRGB8888, fourcc.RGB565):  # the guest's bytes, and converted ones
        small = np.full((50, 100, 3), (200, 32, 64), np.uint8)
        with Image.open(io.BytesIO(thumbnails.make_thumbnail(picture(small, fmt, pad=8)))) as image:
            assert image.size == (100, 50)
            colour = np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1))
            assert np.abs(colour - (200, 32, 64)).max() < 10  # JPEG, 5-bit red


def test_thumbnail_passes_keep_to_their_period_and_cpu_share() -> None:
    assert thumbnails.pause_after(0.01) == pytest.approx(thumbnails.PERIOD - 0.01)
    for spent in (0.2, 0.5, 3.0):
        pause = thumbnails.pause_after(spent)
        assert spent / (spent + pause) <= thumbnails.SHARE + 1e-9
        assert spent + pause >= thumbnails.PERIOD
