"""The demo guest: an animated test card on every connector of every vdispl device.

    host.start_domain("pvdisplay.guests.demo:run", xenstore_socket, guest_name, domid=N)

Each connector gets two XRGB8888 framebuffers (double buffering): the guest draws frame
N+1 into the one not on screen, flips to it, and waits for the flip event, at 60 Hz. The
picture: diagonal stripes in the connector's own colours scrolling one step per frame, a
bouncing square, and a label with the guest, its domain, the connector and the frame
number. A frame costs one copy of a precomputed band plus a small text blit.

Input: the guest opens a `pvdisplay.input.front.Keyboard` for every vkb device
(`device/vkbd/*`) and shows what arrives on the connector with the vkb's unique-id (the
first connector if it has none): a red crosshair where the pointer is (its last absolute
position, or, for a relative-only device, its motion added up from the top-left corner
and kept inside the device's range), a green dot on every touch contact (applied on each
multi-touch SYN, as a touch frame), and the last key code pressed in the label. So input
can be watched, and tested, end to end.

When the backend goes away the connector's loop closes its framebuffers (so the
frontend can go through Reconfiguring to Initialising), waits for the device to connect
again and starts over; the keyboards reconnect on their own; the guest itself never
restarts.
"""

import asyncio
import colorsys
import contextlib
import logging
import zlib
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from pvdisplay import logs
from pvdisplay.display.front import Connector, Display, DisplayError, Framebuffer
from pvdisplay.hv import Hypervisor
from pvdisplay.input.front import InputLostError, Keyboard
from pvdisplay.store.aio import AsyncClient
from pvdisplay.wire import displif, fourcc, kbdif

log = logging.getLogger(__name__)

Pixels = npt.NDArray[np.uint8]

STRIPE_PERIOD = 64
BOX_SIZE = 48
LABEL_HEIGHT = 44
FONT_SIZE = 16
FRAME_RATE = 60
RETRY_DELAY = 0.2
CROSSHAIR_ARM = 12
CROSSHAIR_HALF_WIDTH = 1
TOUCH_RADIUS = 6
# XRGB8888 bytes are B, G, R, X.
CROSSHAIR_COLOUR = (0, 0, 255, 255)
TOUCH_COLOUR = (0, 255, 0, 255)


def _palette(name: str) -> tuple[Pixels, Pixels]:
    """Two XRGB colours derived from the connector's name, so each one looks different."""
    hue = (zlib.crc32(name.encode()) % 360) / 360.0
    colours = []
    for lightness in (0.35, 0.6):
        red, green, blue = colorsys.hls_to_rgb(hue, lightness, 0.7)
        colours.append(np.array([blue * 255, green * 255, red * 255, 255], dtype=np.uint8))
    return colours[0], colours[1]


@dataclass
class InputOverlay:
    """What one connector's input device said last, in connector pixels."""

    scale_pointer: tuple[int, int, int, int] = (1, 1, 1, 1)
    """(device width, device height, connector width, connector height) for the pointer."""
    scale_touch: tuple[int, int, int, int] = (1, 1, 1, 1)
    pointer: tuple[int, int] | None = None
    touches: dict[int, tuple[int, int]] = field(default_factory=dict)
    last_key: int | None = None
    _pending: dict[int, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    # Where the pointer is in device units. A relative device starts where the backend's
    # deltas start from, the top-left corner.
    _device_pointer: tuple[int, int] = field(default=(0, 0), init=False, repr=False)

    def apply(self, event: kbdif.InEvent) -> None:
        match event:
            case kbdif.Position(abs_x=x, abs_y=y):
                self._point_at(x, y)
            case kbdif.Motion(rel_x=dx, rel_y=dy) if dx or dy:
                x, y = self._device_pointer
                self._point_at(x + dx, y + dy)
            case kbdif.Key(pressed=True, keycode=code):
                self.last_key = code
            case (
                kbdif.MtDown(contact_id=contact, abs_x=x, abs_y=y)
                | kbdif.MtMotion(contact_id=contact, abs_x=x, abs_y=y)
            ):
                self._pending[contact] = _to_connector(x, y, self.scale_touch)
            case kbdif.MtUp(contact_id=contact):
                self._pending.pop(contact, None)
            case kbdif.MtSyn():
                self.touches = dict(self._pending)

    def _point_at(self, x: int, y: int) -> None:
        right, bottom = (max(size, 1) - 1 for size in self.scale_pointer[:2])
        x, y = min(max(x, 0), right), min(max(y, 0), bottom)
        self._device_pointer = (x, y)
        self.pointer = _to_connector(x, y, self.scale_pointer)

    def draw(self, pixels: Pixels) -> None:
        """Crosshair and touch dots over `pixels`, a (height, width, 4) XRGB8888 view."""
        radius = TOUCH_RADIUS
        for x, y in self.touches.values():
            top, left = max(y - radius, 0), max(x - radius, 0)
            window = pixels[top : y + radius + 1, left : x + radius + 1]
            rows, columns = np.ogrid[top : top + window.shape[0], left : left + window.shape[1]]
            window[(columns - x) ** 2 + (rows - y) ** 2 <= radius**2] = TOUCH_COLOUR
        if self.pointer is not None:
            x, y = self.pointer
            half = CROSSHAIR_HALF_WIDTH
            top, bottom = max(y - half, 0), y + half + 1
            left, right = max(x - half, 0), x + half + 1
            pixels[top:bottom, max(x - CROSSHAIR_ARM, 0) : x + CROSSHAIR_ARM + 1] = CROSSHAIR_COLOUR
            pixels[max(y - CROSSHAIR_ARM, 0) : y + CROSSHAIR_ARM + 1, left:right] = CROSSHAIR_COLOUR


def _to_connector(x: int, y: int, scale: tuple[int, int, int, int]) -> tuple[int, int]:
    device_width, device_height, width, height = scale
    return x * width // max(device_width, 1), y * height // max(device_height, 1)


class TestCard:
    """Draws frame N of one connector's animation into an XRGB8888 framebuffer."""

    def __init__(
        self, width: int, height: int, title: str, overlay: InputOverlay | None = None
    ) -> None:
        self.width = width
        self.height = height
        self.title = title
        self.overlay = overlay
        dark, light = _palette(title)
        rows = np.arange(height)[:, None]
        columns = np.arange(width + STRIPE_PERIOD)[None, :]
        stripes = ((rows + columns) // (STRIPE_PERIOD // 2)) % 2 == 0
        # The band is wider than the screen by one period: frame N shows it from column N.
        self._band = np.where(stripes[..., None], light, dark).astype(np.uint8)
        self._font = ImageFont.load_default(FONT_SIZE)

    def draw(self, frame: int, target: Pixels) -> None:
        """Draw into `target`, a (height, pitch) uint8 view of the framebuffer."""
        pixels = target[:, : self.width * 4].reshape(self.height, self.width, 4)
        shift = frame % STRIPE_PERIOD
        np.copyto(pixels, self._band[:, shift : shift + self.width])
        self._draw_box(frame, pixels)
        label = f"{self.title}  frame {frame}"
        if self.overlay is not None and self.overlay.last_key is not None:
            label += f"  key {self.overlay.last_key}"
        self._draw_label(label, pixels)
        if self.overlay is not None:
            self.overlay.draw(pixels)

    def _draw_box(self, frame: int, pixels: Pixels) -> None:
        size = min(BOX_SIZE, self.width, self.height)
        x = _bounce(frame * 3, self.width - size)
        y = _bounce(frame * 2, self.height - size)
        pixels[y : y + size, x : x + size] = (255, 255, 255, 255)

    def _draw_label(self, text: str, pixels: Pixels) -> None:
        height = min(LABEL_HEIGHT, self.height)
        label = Image.new("L", (self.width, height))
        ImageDraw.Draw(label).text((8, 4), text, fill=255, font=self._font)
        mask = np.asarray(label) > 127
        region = pixels[:height]
        region[...] = region // 3
        region[mask] = (255, 255, 255, 255)


def _bounce(position: int, span: int) -> int:
    """Triangle wave over 0..span: something moving back and forth."""
    if span <= 0:
        return 0
    phase = position % (2 * span)
    return phase if phase <= span else 2 * span - phase


async def animate(
    display: Display, connector: Connector, title: str, overlay: InputOverlay | None = None
) -> None:
    """Flip a fresh frame to `connector` 60 times a second, across backend restarts."""
    card = TestCard(connector.width, connector.height, title, overlay)
    frame = 0
    while True:
        await display.wait_connected()
        framebuffers: list[Framebuffer] = []
        try:
            for _ in range(2):
                framebuffers.append(
                    await display.create_framebuffer(card.width, card.height, fourcc.XRGB8888)
                )
            await connector.set_config(framebuffers[0])
            frame = await _flip_forever(connector, card, framebuffers, frame)
        except DisplayError as error:
            log.info("display interrupted", extra=logs.fields(connector=title, error=error))
        finally:
            for fb in framebuffers:
                with contextlib.suppress(DisplayError):
                    await fb.close()
        await asyncio.sleep(RETRY_DELAY)


async def _flip_forever(
    connector: Connector, card: TestCard, framebuffers: list[Framebuffer], frame: int
) -> int:
    loop = asyncio.get_running_loop()
    period = 1.0 / FRAME_RATE
    deadline = loop.time()
    while True:
        back = framebuffers[frame % 2]
        card.draw(frame, back.array())
        await connector.flip(back)
        frame += 1
        deadline += period
        delay = deadline - loop.time()
        if delay < 0:
            deadline = loop.time()  # late: drop the backlog instead of racing to catch up
        await asyncio.sleep(max(delay, 0))


async def follow_input(keyboard: Keyboard, overlay: InputOverlay) -> None:
    """Apply every event of `keyboard` to `overlay` until the backend closes the device."""
    async with keyboard:
        async for batch in keyboard:
            for event in batch:
                overlay.apply(event)
    log.info("input device closed by the backend", extra=logs.fields(devid=keyboard.devid))


def _bind(
    keyboard: Keyboard, displays: list[Display], overlays: dict[tuple[int, int], InputOverlay]
) -> InputOverlay:
    """The overlay of `keyboard`'s connector (same unique-id, else the first), scaled to it."""
    connectors = [(display, connector) for display in displays for connector in display.connectors]
    bound = [pair for pair in connectors if pair[1].unique_id == keyboard.unique_id]
    display, connector = (bound or connectors)[0]
    overlay = overlays[(display.devid, connector.index)]
    overlay.scale_pointer = (keyboard.width, keyboard.height, connector.width, connector.height)
    overlay.scale_touch = (keyboard.mt_width, keyboard.mt_height, connector.width, connector.height)
    return overlay


async def _device_ids(xenstore_socket: str, kind: str) -> list[int]:
    async with await AsyncClient.connect(xenstore_socket) as xs:
        try:
            return sorted(int(name) for name in await xs.ls(f"device/{kind}"))
        except FileNotFoundError:
            return []


def run(hv: Hypervisor, control: Connection, xenstore_socket: str, guest_name: str) -> None:
    """Domain entry: animate every connector of every vdispl device until killed."""

    async def session() -> None:
        displays = [
            await Display.open(hv, xenstore_socket, devid)
            for devid in await _device_ids(xenstore_socket, displif.DRIVER_NAME)
        ]
        overlays = {
            (display.devid, connector.index): InputOverlay()
            for display in displays
            for connector in display.connectors
        }
        async with asyncio.TaskGroup() as group:
            for display in displays:
                for connector in display.connectors:
                    title = f"{guest_name} dom{hv.domid} {connector.unique_id or connector.index}"
                    overlay = overlays[(display.devid, connector.index)]
                    group.create_task(animate(display, connector, title, overlay))
            for devid in await _device_ids(xenstore_socket, kbdif.DRIVER_NAME):
                try:
                    keyboard = await Keyboard.open(hv, xenstore_socket, devid)
                except (InputLostError, OSError, TimeoutError) as error:
                    log.warning("no input device", extra=logs.fields(devid=devid, error=error))
                    continue
                group.create_task(follow_input(keyboard, _bind(keyboard, displays, overlays)))

    asyncio.run(session())
