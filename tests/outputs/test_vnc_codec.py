"""The sans-IO pieces of the VNC server: DES, pixel formats, ZRLE, damage, updates, the
RFB handshake and message parser (fuzzed), and the keysym table against the C headers."""

import itertools
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

# An independent DES: OpenSSL's, through cryptography (which vncdotool depends on).
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pvdisplay.outputs.feed.mirror import CanonicalMirror, canonical_frame
from pvdisplay.outputs.feed.rect import Rect
from pvdisplay.outputs.vnc import damage, des, keysyms, rfb
from pvdisplay.outputs.vnc.pixels import SERVER_FORMAT, RfbPixelFormat, client_pixels
from pvdisplay.outputs.vnc.pointer import InputTranslator
from pvdisplay.outputs.vnc.updates import UpdateEncoder
from pvdisplay.outputs.vnc.zrle import ZrleEncoder
from pvdisplay.planes.input_events import Key, PointerMove, Wheel
from pvdisplay.wire import fourcc
from pvdisplay.wire.errors import ProtocolError

CHALLENGE = bytes(range(16))
FORMATS = [
    SERVER_FORMAT,
    RfbPixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16),  # vncdotool's RGB32
    RfbPixelFormat(32, 24, True, True, 255, 255, 255, 16, 8, 0),
    RfbPixelFormat(32, 24, False, True, 255, 255, 255, 24, 16, 8),  # high three bytes
    RfbPixelFormat(32, 24, True, True, 255, 255, 255, 24, 16, 8),  # the same, big-endian
    RfbPixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0),  # RGB565
    RfbPixelFormat(16, 15, True, True, 31, 31, 31, 10, 5, 0),
    RfbPixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6),  # BGR233
]


# -- DES ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "plain", "cipher"),
    [
        ("133457799BBCDFF1", "0123456789ABCDEF", "85E813540F0AB405"),  # the textbook example
        ("0000000000000000", "0000000000000000", "8CA64DE9C1B123A7"),
        ("FFFFFFFFFFFFFFFF", "FFFFFFFFFFFFFFFF", "7359B2163E4EDC58"),
        ("3000000000000000", "1000000000000001", "958E6E627A05557B"),
    ],
)
def test_des_known_answers(key: str, plain: str, cipher: str) -> None:
    encrypted = des.encrypt_block(bytes.fromhex(key), bytes.fromhex(plain))
    assert encrypted == bytes.fromhex(cipher)


@settings(max_examples=50)
@given(key=st.binary(min_size=8, max_size=8), block=st.binary(min_size=8, max_size=8))
def test_des_matches_openssl(key: bytes, block: bytes) -> None:
    reference = Cipher(TripleDES(key * 3), modes.ECB()).encryptor().update(block)
    assert des.encrypt_block(key, block) == reference


def test_vnc_key_reverses_bits_and_truncates_to_eight_bytes() -> None:
    assert des.vnc_key("\x01\x80") == b"\x80\x01" + bytes(6)
    assert des.vnc_key("abcdefghij") == des.vnc_key("abcdefgh")


# -- pixels -------------------------------------------------------------------------------

frames = hnp.arrays(
    np.uint32,
    st.tuples(st.integers(1, 70), st.integers(1, 70)),
    elements=st.integers(0, 0xFFFFFF),
)


def decode_pixels(raw: bytes, fmt: RfbPixelFormat, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """Reference: client pixel bytes back to (R, G, B) at the client's precision."""
    values = np.frombuffer(raw, dtype=fmt.dtype).astype(np.int64).reshape(shape)
    return np.stack(
        [
            (values >> fmt.red_shift) & fmt.red_max,
            (values >> fmt.green_shift) & fmt.green_max,
            (values >> fmt.blue_shift) & fmt.blue_max,
        ],
        axis=-1,
    )


def expected_channels(frame: npt.NDArray[np.uint32], fmt: RfbPixelFormat) -> npt.NDArray[np.int64]:
    rgb = np.stack([(frame >> 16) & 255, (frame >> 8) & 255, frame & 255], -1).astype(np.int64)
    maxima = np.array([fmt.red_max, fmt.green_max, fmt.blue_max])
    return (rgb * maxima + 127) // 255  # type: ignore[no-any-return]


@settings(max_examples=40)
@given(frame=frames, fmt=st.sampled_from(FORMATS))
def test_client_pixels_hold_each_channel_rounded_to_the_client_precision(
    frame: npt.NDArray[np.uint32], fmt: RfbPixelFormat
) -> None:
    raw = client_pixels(frame, fmt).tobytes()
    assert len(raw) == frame.size * fmt.bytes_per_pixel
    np.testing.assert_array_equal(
        decode_pixels(raw, fmt, frame.shape), expected_channels(frame, fmt)
    )


@pytest.mark.parametrize(
    "fields",
    [
        (24, 24, 0, 1, 255, 255, 255, 16, 8, 0),  # 24 bpp is not an RFB size
        (32, 24, 0, 0, 255, 255, 255, 16, 8, 0),  # colour map
        (16, 16, 0, 1, 31, 63, 31, 12, 5, 0),  # red overflows 16 bits
        (32, 24, 0, 1, 254, 255, 255, 16, 8, 0),  # max not 2^n-1
        (32, 24, 0, 1, 0, 255, 255, 16, 8, 0),
    ],
)
def test_pixel_formats_we_cannot_honour_are_einval(fields: tuple[int, ...]) -> None:
    with pytest.raises(ProtocolError):
        RfbPixelFormat.unpack(struct.pack(">BBBBHHHBBB3x", *fields))


# -- ZRLE: encode, then decode with an independent reference ------------------------------


def read_run_length(data: bytes, at: int) -> tuple[int, int]:
    length = 1
    while True:
        byte = data[at]
        at += 1
        length += byte
        if byte != 255:
            return length, at


def zrle_decode(
    body: bytes,
    width: int,
    height: int,
    fmt: RfbPixelFormat,
    stream: "zlib._Decompress",
    *,
    tile_sizes: list[int] | None = None,
) -> npt.NDArray[np.int64]:
    """RFC 6143 7.7.6 decoder, written from the text; returns client pixel values and
    appends each tile's encoded size to `tile_sizes`."""
    (length,) = struct.unpack_from(">I", body)
    assert len(body) == 4 + length
    data = stream.decompress(body[4:])
    compact = fmt.compact_slice
    size = compact.stop - compact.start
    pad = b"\0" * fmt.bytes_per_pixel

    def cpixel(at: int) -> int:
        full = bytearray(pad)
        full[compact] = data[at : at + size]
        return int.from_bytes(full, "big" if fmt.big_endian else "little")

    out = np.zeros((height, width), dtype=np.int64)
    at = 0
    for top in range(0, height, 64):
        for left in range(0, width, 64):
            th, tw = min(64, height - top), min(64, width - left)
            tile_start = at
            kind = data[at]
            at += 1
            pixels: list[int] = []
            if kind == 0:
                pixels = [cpixel(at + i * size) for i in range(th * tw)]
                at += th * tw * size
            elif kind == 1:
                pixels = [cpixel(at)] * (th * tw)
                at += size
            elif 2 <= kind <= 16:
                palette = [cpixel(at + i * size) for i in range(kind)]
                at += kind * size
                bits = 1 if kind == 2 else 2 if kind <= 4 else 4
                for _ in range(th):
                    row_bytes = (tw * bits + 7) // 8
                    bitstring = "".join(f"{b:08b}" for b in data[at : at + row_bytes])
                    at += row_bytes
                    pixels += [
                        palette[int(bitstring[i * bits : (i + 1) * bits], 2)] for i in range(tw)
                    ]
            elif kind == 128:
                while len(pixels) < th * tw:
                    value = cpixel(at)
                    run, at = read_run_length(data, at + size)
                    pixels += [value] * run
            elif kind >= 130:
                palette = [cpixel(at + i * size) for i in range(kind - 128)]
                at += (kind - 128) * size
                while len(pixels) < th * tw:
                    index = data[at]
                    at += 1
                    run = 1
                    if index & 128:
                        run, at = read_run_length(data, at)
                    pixels += [palette[index & 127]] * run
            else:
                raise AssertionError(f"unused subencoding {kind}")
            assert len(pixels) == th * tw
            if tile_sizes is not None:
                tile_sizes.append(at - tile_start)
            out[top : top + th, left : left + tw] = np.array(pixels).reshape(th, tw)
    assert at == len(data)
    return out


def tiles_with_structure(draw: st.DrawFn) -> npt.NDArray[np.uint32]:
    """Frames whose tiles exercise every subencoding: solid, few colours, runs, noise."""
    height, width = draw(st.integers(1, 150)), draw(st.integers(1, 150))
    colours = draw(st.integers(1, 200))
    palette = np.array(draw(st.lists(st.integers(0, 0xFFFFFF), min_size=colours, max_size=colours)))
    run = draw(st.integers(1, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    indices = np.repeat(rng.integers(0, colours, size=height * width // run + 1), run)
    return palette[indices[: height * width]].reshape(height, width).astype(np.uint32)


structured_frames = st.composite(tiles_with_structure)()


@settings(max_examples=60, deadline=None)
@given(frame=structured_frames, fmt=st.sampled_from(FORMATS))
def test_zrle_decodes_back_to_the_client_pixels(
    frame: npt.NDArray[np.uint32], fmt: RfbPixelFormat
) -> None:
    encoder, stream = ZrleEncoder(), zlib.decompressobj()
    height, width = frame.shape
    for version in (frame, frame[::-1].copy()):  # two rectangles through one zlib stream
        decoded = zrle_decode(encoder.encode(version, fmt), width, height, fmt, stream)
        expected = client_pixels(version, fmt).astype(np.int64)
        np.testing.assert_array_equal(decoded, expected)


def smallest_tile_size(tile: npt.NDArray[np.int64], cpixel: int) -> int:
    """Reference: the fewest bytes any ZRLE subencoding needs for one tile (RFC 6143
    7.7.6), counted directly from its runs and colours."""
    height, width = tile.shape
    flat = tile.ravel().tolist()
    runs = [len(list(group)) for _, group in itertools.groupby(flat)]
    colours = len(set(flat))
    run_bytes = sum((run - 1) // 255 + 1 for run in runs)
    sizes = [1 + width * height * cpixel, 1 + len(runs) * cpixel + run_bytes]
    if colours == 1:
        sizes.append(1 + cpixel)
    if 2 <= colours <= 16:
        bits = 1 if colours == 2 else 2 if colours <= 4 else 4
        sizes.append(1 + colours * cpixel + height * ((width * bits + 7) // 8))
    if 2 <= colours <= 127:
        long_bytes = sum((run - 1) // 255 + 1 for run in runs if run > 1)
        sizes.append(1 + colours * cpixel + len(runs) + long_bytes)
    return int(min(sizes))


@settings(max_examples=40, deadline=None)
@given(frame=structured_frames, fmt=st.sampled_from(FORMATS), corner=st.integers(0, 70))
def test_zrle_gives_every_tile_its_smallest_subencoding(
    frame: npt.NDArray[np.uint32], fmt: RfbPixelFormat, corner: int
) -> None:
    """Also through a strided view, as updates pass regions of a larger frame."""
    height, width = frame.shape
    larger = np.zeros((height + corner, width + corner + 3), dtype=np.uint32)
    larger[corner:, corner : corner + width] = frame
    region = larger[corner:, corner : corner + width]
    sizes: list[int] = []
    body = ZrleEncoder().encode(region, fmt)
    decoded = zrle_decode(body, width, height, fmt, zlib.decompressobj(), tile_sizes=sizes)
    expected = client_pixels(frame, fmt).astype(np.int64)
    np.testing.assert_array_equal(decoded, expected)
    cpixel = fmt.compact_slice.stop - fmt.compact_slice.start
    tiles = [
        expected[top : top + 64, left : left + 64]
        for top in range(0, height, 64)
        for left in range(0, width, 64)
    ]
    assert sizes == [smallest_tile_size(tile, cpixel) for tile in tiles]


def test_zrle_picks_solid_and_palette_tiles_for_flat_pictures() -> None:
    frame = np.zeros((64, 128), dtype=np.uint32)
    frame[:, 64:] = np.where(np.arange(64)[None, :] % 2, 0xFF0000, 0x00FF00)
    data = zlib.decompressobj().decompress(ZrleEncoder().encode(frame, SERVER_FORMAT)[4:])
    assert data[:4] == bytes([1, 0, 0, 0])  # solid black, 3-byte CPIXEL
    assert data[4] == 2  # two-colour packed palette
    assert len(data) == 4 + 1 + 2 * 3 + 64 * 8


# -- damage and updates -------------------------------------------------------------------


@settings(max_examples=40)
@given(
    tiles=hnp.arrays(np.bool_, st.tuples(st.integers(1, 8), st.integers(1, 8))),
    trim=st.tuples(st.integers(0, 63), st.integers(0, 63)),
)
def test_tile_rects_cover_exactly_the_marked_tiles(
    tiles: npt.NDArray[np.bool_], trim: tuple[int, int]
) -> None:
    height, width = tiles.shape[0] * 64 - trim[0], tiles.shape[1] * 64 - trim[1]
    covered = np.zeros((height, width), dtype=np.int32)
    for rect in damage.tile_rects(tiles, width, height):
        covered[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] += 1
    expected = np.repeat(np.repeat(tiles, 64, 0), 64, 1)[:height, :width]
    np.testing.assert_array_equal(covered, expected.astype(np.int32))


def apply_update(
    screen: npt.NDArray[np.uint32], update: bytes, encoding: int
) -> npt.NDArray[np.uint32]:
    """A minimal client for SERVER_FORMAT updates: Raw, CopyRect, DesktopSize."""
    kind, count = struct.unpack_from(">BxH", update)
    assert kind == 0
    at = 4
    for _ in range(count):
        x, y, w, h, enc = struct.unpack_from(">HHHHi", update, at)
        at += 12
        if enc == rfb.ENCODING_DESKTOP_SIZE:
            screen = np.zeros((h, w), dtype=np.uint32)
        elif enc == rfb.ENCODING_COPYRECT:
            sx, sy = struct.unpack_from(">HH", update, at)
            at += 4
            screen[y : y + h, x : x + w] = screen[sy : sy + h, sx : sx + w].copy()
        else:
            assert enc == encoding == rfb.ENCODING_RAW
            screen[y : y + h, x : x + w] = np.frombuffer(update, "<u4", w * h, at).reshape(h, w)
            at += 4 * w * h
    assert at == len(update)
    return screen


@settings(max_examples=40, deadline=None)
@given(
    base=hnp.arrays(np.uint32, (150, 200), elements=st.integers(0, 0xFFFFFF)),
    dx=st.integers(-40, 40),
    dy=st.integers(-40, 40),
    box=st.tuples(st.integers(0, 199), st.integers(0, 149), st.integers(0, 0xFFFFFF)),
)
def test_incremental_updates_with_copyrect_rebuild_the_new_frame(
    base: npt.NDArray[np.uint32], dx: int, dy: int, box: tuple[int, int, int]
) -> None:
    wide = np.tile(base, (3, 3))  # a scene larger than the screen, panned by (dx, dy)
    old = wide[150:300, 200:400].copy()
    new = wide[150 - dy : 300 - dy, 200 - dx : 400 - dx].copy()
    new[box[1] : box[1] + 10, box[0] : box[0] + 10] = box[2]
    encoder = UpdateEncoder(200, 150)
    encoder.encodings = (rfb.ENCODING_RAW, rfb.ENCODING_COPYRECT)
    full = Rect(0, 0, 200, 150)
    first = encoder.update(old, full, incremental=False)
    assert first is not None
    screen = apply_update(np.zeros((150, 200), np.uint32), first, rfb.ENCODING_RAW)
    update = encoder.update(new, full, incremental=True)
    if update is None:
        np.testing.assert_array_equal(old, new)
        return
    np.testing.assert_array_equal(apply_update(screen, update, rfb.ENCODING_RAW), new)


def test_successive_partial_updates_rebuild_each_frame_and_leave_frames_untouched() -> None:
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 1 << 24, size=(150, 200), dtype=np.uint32)
    encoder = UpdateEncoder(200, 150)
    encoder.encodings = (rfb.ENCODING_RAW,)
    full = Rect(0, 0, 200, 150)
    first = encoder.update(frame, full, incremental=False)
    assert first is not None
    screen = apply_update(np.zeros((150, 200), np.uint32), first, rfb.ENCODING_RAW)
    shown = [(frame, frame.copy())]
    for step in range(6):
        frame = frame.copy()
        top, left = rng.integers(0, 140), rng.integers(0, 190)
        frame[top : top + 10, left : left + 10] = step
        update = encoder.update(frame, full, incremental=True)
        assert update is not None
        screen = apply_update(screen, update, rfb.ENCODING_RAW)
        np.testing.assert_array_equal(screen, frame)
        shown.append((frame, frame.copy()))
    for given_frame, snapshot in shown:  # frames are shared between clients: read-only
        np.testing.assert_array_equal(given_frame, snapshot)


def test_a_horizontal_scroll_is_sent_as_copyrect() -> None:
    rng = np.random.default_rng(1)
    scene = rng.integers(0, 1 << 24, size=(256, 400), dtype=np.uint32)
    encoder = UpdateEncoder(384, 256)
    encoder.encodings = (rfb.ENCODING_RAW, rfb.ENCODING_COPYRECT)
    full = Rect(0, 0, 384, 256)
    encoder.update(scene[:, 8:392].copy(), full, incremental=False)
    update = encoder.update(scene[:, 5:389].copy(), full, incremental=True)
    assert update is not None
    assert struct.pack(">i", rfb.ENCODING_COPYRECT) in update
    assert len(update) < 384 * 256  # far less than the 4 bytes a pixel of Raw


def test_unchanged_frames_give_no_incremental_update_and_resize_uses_desktop_size() -> None:
    frame = np.arange(64 * 80, dtype=np.uint32).reshape(64, 80)
    encoder = UpdateEncoder(80, 64)
    encoder.encodings = (rfb.ENCODING_DESKTOP_SIZE,)
    encoder.update(frame, Rect(0, 0, 80, 64), incremental=False)
    assert encoder.update(frame.copy(), Rect(0, 0, 80, 64), incremental=True) is None
    bigger = np.ones((100, 120), dtype=np.uint32)
    update = encoder.update(bigger, Rect(0, 0, 80, 64), incremental=True)
    assert update is not None
    screen = apply_update(np.zeros((64, 80), np.uint32), update, rfb.ENCODING_RAW)
    np.testing.assert_array_equal(screen, bigger)


def test_without_desktop_size_a_resized_frame_is_cropped_to_the_client() -> None:
    encoder = UpdateEncoder(80, 64)
    bigger = np.arange(100 * 120, dtype=np.uint32).reshape(100, 120)
    update = encoder.update(bigger, Rect(0, 0, 80, 64), incremental=False)
    assert update is not None
    screen = apply_update(np.zeros((64, 80), np.uint32), update, rfb.ENCODING_RAW)
    np.testing.assert_array_equal(screen, bigger[:64, :80])


# -- the frame mirror: what the guest changed, found in place ------------------------------


def tile_truth(old: npt.NDArray[np.uint32], new: npt.NDArray[np.uint32]) -> npt.NDArray[np.bool_]:
    return damage.changed_tiles(old, new)


def guest_bytes(
    frame: npt.NDArray[np.uint32], fmt: fourcc.PixelFormat, pad: int, alpha: int
) -> npt.NDArray[np.uint8]:
    """A canonical frame as the guest stores it: XRGB8888/ARGB8888 words with `alpha` in
    the top byte, or RGB565; rows padded by `pad` bytes."""
    height, width = frame.shape
    if fmt == fourcc.RGB565:
        r, g, b = (frame >> 16) & 0xFF, (frame >> 8) & 0xFF, frame & 0xFF
        rows = ((r >> 3) << 11 | (g >> 2) << 5 | b >> 3).astype("<u2").view(np.uint8)
    else:
        rows = (frame | np.uint32(alpha << 24)).astype("<u4").view(np.uint8)
    padded = np.zeros((height, width * fmt.bytes_per_pixel + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows.reshape(height, -1)
    return padded.reshape(-1)


@settings(max_examples=40, deadline=None)
@given(
    first=hnp.arrays(
        np.uint32,
        st.tuples(st.integers(1, 200), st.integers(1, 200)),
        elements=st.integers(0, 0xFFFFFF),
    ),
    fmt=st.sampled_from([fourcc.XRGB8888, fourcc.ARGB8888, fourcc.RGB565]),
    pad=st.sampled_from([0, 4, 12]),
    data=st.data(),
)
def test_the_mirror_finds_exactly_the_changed_tiles_and_ends_equal_to_the_guest(
    first: npt.NDArray[np.uint32], fmt: fourcc.PixelFormat, pad: int, data: st.DataObject
) -> None:
    height, width = first.shape
    stride = width * fmt.bytes_per_pixel + pad
    mirror = CanonicalMirror(fmt, width, height, stride)
    shown = [first]
    for _ in range(data.draw(st.integers(1, 4))):
        after = shown[-1].copy()
        for _ in range(data.draw(st.integers(0, 3))):
            y, x = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
            after[y : y + data.draw(st.integers(1, 70)), x : x + data.draw(st.integers(1, 70))] ^= (
                0x080808
            )
        shown.append(after)
    generations = []
    for index, frame in enumerate(shown):
        # The X/A byte never counts: only what a client sees.
        guest = guest_bytes(frame, fmt, pad, alpha=data.draw(st.integers(0, 255)))
        expected = canonical_frame(fmt, guest, width, height, stride)
        before = mirror.frame.copy()
        changed = mirror.update(guest)
        if index:
            np.testing.assert_array_equal(changed, tile_truth(before, expected))
        np.testing.assert_array_equal(mirror.frame, expected)
        generations.append((mirror.generation, expected))
    # Since any earlier generation: every tile that differs, and only tiles that changed.
    last = generations[-1][1]
    for index, (generation, frame) in enumerate(generations[:-1]):
        since = mirror.changed_since(generation)
        assert not np.any(tile_truth(frame, last) & ~since)
        steps = np.zeros_like(since)
        for (_, old), (_, new) in itertools.pairwise(generations[index:]):
            steps |= tile_truth(old, new)
        np.testing.assert_array_equal(since, steps)


@settings(max_examples=30, deadline=None)
@given(
    base=hnp.arrays(np.uint32, (150, 200), elements=st.integers(0, 0xFFFFFF)),
    data=st.data(),
)
def test_clock_driven_updates_of_a_mirror_written_during_encoding_end_exact(
    base: npt.NDArray[np.uint32], data: st.DataObject
) -> None:
    """Updates built from the mirror's clock (no comparison), for requests of any area,
    with CopyRect, while the next frame is written into the mirror between the update's
    planning and its encoding (a torn read): once the guest stops, the client's screen
    equals the guest's frame."""
    fmt, stride = fourcc.XRGB8888, 200 * 4
    mirror = CanonicalMirror(fmt, 200, 150, stride)
    mirror.update(guest_bytes(base, fmt, 0, 0))
    encoder = UpdateEncoder(200, 150)
    encoder.encodings = (rfb.ENCODING_RAW, rfb.ENCODING_COPYRECT)
    first = encoder.update(mirror.frame, Rect(0, 0, 200, 150), incremental=False)
    assert first is not None
    screen = apply_update(np.zeros((150, 200), np.uint32), first, rfb.ENCODING_RAW)
    given_generation, frame = mirror.generation, base
    for _ in range(data.draw(st.integers(1, 5))):
        frame = frame.copy()
        shift = data.draw(st.integers(-20, 20))
        frame = np.roll(frame, shift, axis=data.draw(st.integers(0, 1)))
        y, x = data.draw(st.integers(0, 149)), data.draw(st.integers(0, 199))
        frame[y : y + 20, x : x + 20] = data.draw(st.integers(0, 0xFFFFFF))
        mirror.update(guest_bytes(frame, fmt, 0, 0))
        changed = mirror.changed_since(given_generation)
        given_generation = mirror.generation
        area = Rect(data.draw(st.integers(0, 199)), data.draw(st.integers(0, 149)), 200, 150).clip(
            200, 150
        )
        if data.draw(st.booleans()):  # the guest's next frame lands mid-update
            torn = frame.copy()
            torn[: data.draw(st.integers(0, 150))] ^= 0x010101
            written = torn
        else:
            written = frame
        update = _update_while_written(encoder, mirror, area, changed, written)
        if update is not None:
            screen = apply_update(screen, update, rfb.ENCODING_RAW)
        if written is not frame:
            frame = written
    # Still: the last frame, asked for whole until nothing is left to send.
    changed = mirror.changed_since(given_generation)
    for _ in range(3):
        update = encoder.update(mirror.frame, Rect(0, 0, 200, 150), True, changed)
        changed = np.zeros_like(changed)
        if update is not None:
            screen = apply_update(screen, update, rfb.ENCODING_RAW)
    np.testing.assert_array_equal(screen, frame)


def _update_while_written(
    encoder: UpdateEncoder,
    mirror: CanonicalMirror,
    area: Rect,
    changed: npt.NDArray[np.bool_],
    written: npt.NDArray[np.uint32],
) -> bytes | None:
    """`encoder.update`, with `written` put into the mirror while the update encodes
    (once its first rectangle is encoded)."""
    original = encoder._encode
    wrote = False

    def encode_then_write(region: npt.NDArray[np.uint32]) -> bytes:
        nonlocal wrote
        encoded = original(region)
        if not wrote:
            wrote = True
            mirror.update(guest_bytes(written, fourcc.XRGB8888, 0, 0))
        return encoded

    encoder._encode = encode_then_write  # type: ignore[method-assign]
    try:
        return encoder.update(mirror.frame, area, True, changed)
    finally:
        encoder._encode = original  # type: ignore[method-assign]
        if not wrote:  # nothing was encoded: the frame lands after the update
            mirror.update(guest_bytes(written, fourcc.XRGB8888, 0, 0))


# -- the RFB state machine ----------------------------------------------------------------


def handshake(version: bytes, password: str | None) -> tuple[rfb.ServerConnection, bytes]:
    """Run a client's side of the handshake; return the connection and everything sent."""
    server = rfb.ServerConnection(password, CHALLENGE)
    sent = server.data_to_send()
    assert sent == b"RFB 003.008\n"
    events = server.receive(version)
    sent += server.data_to_send()
    minor = int(version[8:11])
    if minor in {7, 8}:
        server.receive(bytes([server.security_type]))
        sent += server.data_to_send()
    if password is not None:
        server.receive(des.vnc_response(password, CHALLENGE))
        sent += server.data_to_send()
    events = server.receive(b"\x01")
    assert events == [rfb.ClientInit(shared=True)]
    server.server_init(64, 48, "test")
    sent += server.data_to_send()
    return server, sent


@pytest.mark.parametrize(
    ("version", "password", "security"),
    [
        (b"RFB 003.003\n", None, struct.pack(">I", 1)),
        (b"RFB 003.003\n", "pw", struct.pack(">I", 2) + CHALLENGE + struct.pack(">I", 0)),
        (b"RFB 003.007\n", None, b"\x01\x01"),
        (b"RFB 003.007\n", "pw", b"\x01\x02" + CHALLENGE + struct.pack(">I", 0)),
        (b"RFB 003.008\n", None, b"\x01\x01" + struct.pack(">I", 0)),
        (b"RFB 003.008\n", "pw", b"\x01\x02" + CHALLENGE + struct.pack(">I", 0)),
        (b"RFB 003.005\n", None, struct.pack(">I", 1)),  # unknown 3.x is 3.3
    ],
)
def test_handshake_bytes_per_version_and_security(
    version: bytes, password: str | None, security: bytes
) -> None:
    server, sent = handshake(version, password)
    server_init = struct.pack(">HH", 64, 48) + SERVER_FORMAT.pack() + struct.pack(">I", 4)
    assert sent == b"RFB 003.008\n" + security + server_init + b"test"
    assert server.state is rfb.State.NORMAL


@pytest.mark.parametrize(("minor", "reason"), [(b"003", b""), (b"007", b""), (b"008", b"x")])
def test_a_wrong_password_fails_with_the_version_s_security_result(
    minor: bytes, reason: bytes
) -> None:
    server = rfb.ServerConnection("right", CHALLENGE)
    server.data_to_send()
    server.receive(b"RFB 003." + minor + b"\n")
    if minor != b"003":
        server.receive(b"\x02")
    server.data_to_send()
    events = server.receive(des.vnc_response("wrong", CHALLENGE))
    assert isinstance(events[-1], rfb.Closed)
    sent = server.data_to_send()
    assert sent[:4] == struct.pack(">I", 1)
    assert (len(sent) > 4) == bool(reason)  # only 3.8 carries a reason string
    assert server.receive(b"\x01") == []


def test_security_none_is_not_accepted_when_a_password_is_set() -> None:
    server = rfb.ServerConnection("pw", CHALLENGE)
    server.receive(b"RFB 003.008\n")
    assert isinstance(server.receive(b"\x01")[-1], rfb.Closed)


def test_client_messages_split_anywhere_decode_to_the_same_events() -> None:
    fmt = RfbPixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
    stream = (
        b"\x00\x00\x00\x00" + fmt.pack()
        + struct.pack(">BxHiii", 2, 3, 16, 1, -223)
        + struct.pack(">BBHHHH", 3, 1, 1, 2, 30, 40)
        + struct.pack(">BBxxI", 4, 1, 0x61)
        + struct.pack(">BBHH", 5, 9, 7, 8)
        + struct.pack(">BxxxI", 6, 3) + b"abc"
    )  # fmt: skip
    expected = [
        rfb.SetPixelFormat(fmt),
        rfb.SetEncodings((16, 1, -223)),
        rfb.UpdateRequest(True, Rect(1, 2, 30, 40)),
        rfb.KeyEvent(True, 0x61),
        rfb.PointerEvent(9, 7, 8),
        rfb.CutText(b"abc"),
    ]
    for cut in range(len(stream) + 1):
        server, _ = handshake(b"RFB 003.008\n", None)
        events = server.receive(stream[:cut]) + server.receive(stream[cut:])
        assert events == expected


@settings(max_examples=300)
@given(data=st.lists(st.binary(max_size=64), max_size=8), version=st.sampled_from([3, 7, 8]))
def test_fuzzed_client_bytes_end_in_events_or_a_clean_close(
    data: list[bytes], version: int
) -> None:
    for start in ("fresh", "normal"):
        if start == "fresh":
            server = rfb.ServerConnection("pw" if version == 8 else None, CHALLENGE)
        else:
            server, _ = handshake(f"RFB 003.00{version}\n".encode(), None)
        for chunk in data:
            events = server.receive(chunk)
            assert all(not isinstance(e, rfb.Closed) for e in events[:-1])
            if events and isinstance(events[-1], rfb.Closed):
                assert server.closed
            server.data_to_send()


def test_unknown_message_type_and_oversized_cut_text_close() -> None:
    server, _ = handshake(b"RFB 003.008\n", None)
    assert isinstance(server.receive(b"\xfa")[-1], rfb.Closed)
    server, _ = handshake(b"RFB 003.008\n", None)
    closing = server.receive(struct.pack(">BxxxI", 6, rfb.MAX_CUT_TEXT + 1))
    assert isinstance(closing[-1], rfb.Closed)


# -- input --------------------------------------------------------------------------------


def test_pointer_masks_become_moves_buttons_and_wheel_steps() -> None:
    translator = InputTranslator()
    assert translator.pointer(rfb.PointerEvent(0, 5, 6)) == [PointerMove(5, 6)]
    assert translator.pointer(rfb.PointerEvent(0b101, 5, 6)) == [
        Key(0x110, True),
        Key(0x111, True),
    ]
    assert translator.pointer(rfb.PointerEvent(0b1000, 5, 6)) == [
        Key(0x110, False),
        Key(0x111, False),
        Wheel(1),
    ]
    assert translator.pointer(rfb.PointerEvent(0b10000, 7, 6)) == [PointerMove(7, 6), Wheel(-1)]
    assert translator.pointer(rfb.PointerEvent(0b10, 7, 6)) == [Key(0x112, True)]


def test_keysyms_map_to_us_layout_keys() -> None:
    translator = InputTranslator()
    assert translator.key(rfb.KeyEvent(True, ord("A"))) == [Key(30, True)]
    assert translator.key(rfb.KeyEvent(False, ord("!"))) == [Key(2, False)]
    assert translator.key(rfb.KeyEvent(True, 0x20AC)) == []  # the euro sign: no US key


def test_keysym_table_matches_the_compiled_headers(tmp_path: Path) -> None:
    """Every keysym and KEY_* value, printed by gcc from <X11/keysymdef.h> and
    <linux/input-event-codes.h>."""
    characters = {chr(code) for code in keysyms.KEYSYM_TO_CODE if code < 0x100}
    lines = ['#include <stdio.h>', '#define XK_MISCELLANY', '#define XK_LATIN1',
             '#define XK_XKB_KEYS', '#include <X11/keysymdef.h>',
             '#include <linux/input-event-codes.h>', 'int main(void) {']  # fmt: skip
    lines += [f'printf("{name} %d\\n", {name});' for name in keysyms.LINUX_CODES]
    lines += [f'printf("XK_{name} %d\\n", XK_{name});' for name in keysyms.FUNCTION_KEYSYMS]
    lines += ["return 0; }"]
    source = tmp_path / "codes.c"
    source.write_text("\n".join(lines))
    subprocess.run(["gcc", "-Wall", "-Werror", "-o", tmp_path / "codes", source], check=True)
    output = subprocess.run([tmp_path / "codes"], capture_output=True, text=True, check=True)
    compiled = dict(line.split() for line in output.stdout.splitlines())
    for name, code in keysyms.LINUX_CODES.items():
        assert int(compiled[name]) == code, name
    for name, (keysym, _) in keysyms.FUNCTION_KEYSYMS.items():
        assert int(compiled[f"XK_{name}"]) == keysym, name
    assert all(0x20 <= ord(c) < 0x7F for c in characters)  # Latin-1 keysyms: code points


def test_random_bytes_never_escape_as_an_exception_with_a_password() -> None:
    for seed in range(200):
        server = rfb.ServerConnection("pw", CHALLENGE)
        server.receive(b"RFB 003.008\n\x02" + os.urandom(seed % 40))
