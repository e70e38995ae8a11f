"""What one display backend accepts from a guest: sizes, counts and names.

Below both the backend, which enforces them on what a guest writes, and the toolstack,
which refuses a config the backend would refuse.
"""

import re

MAX_DIMENSION = 16384
# unique-id travels in a XenStore value and in xl's "id:WxH;..." list, so it may not
# contain the list's separators or whitespace.
UNIQUE_ID = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
UNIQUE_ID_FORM = "1-64 of A-Z a-z 0-9 _ . @ + -"

MAX_CONNECTORS = 64
"""Connectors one vdispl device may have; the frontend library reads no more (Linux
xen-front stops at 4)."""
LEGACY_UNIQUE_ID_FIELD = "id"
"""Where older libxl writes a connector's unique-id (not a displif.h name); both ends read
it when `unique-id` is absent."""

MAX_BUFFER_SIZE = 256 << 20
"""Largest display buffer accepted (64 Ki pages; 4096x4096 ARGB8888 is 64 MiB)."""

MAX_MODE_PIXELS = MAX_BUFFER_SIZE // 4
"""Largest connector mode, in pixels: a full-screen 32-bpp frame fits one display buffer
(16384x4096 or 8192x8192; each side is at most `MAX_DIMENSION`)."""

DEFAULT_PAGE_BUDGET = 16_384
"""Pages one frontend device may make the backend hold at once (64 MiB).

Enough to double-buffer four 1080p XRGB8888 connectors (4 x 2 x 2025 pages) or one 4K
connector (2 x 8100). The backend domain's own limits are shared by every guest: on the
emulated host its 524288 mappable pages hold 32 devices at full budget, and its 32768
grant refs (Xen's default grant table) two be-alloc devices.
"""


DEFAULT_DESCRIPTOR_BUDGET = 256
"""Descriptors one frontend device may make the backend process hold at once.

A display buffer holds its handle's (one per memory object it spans, and a lease), one
for the hypervisor's watch of its release, and one more for backend-allocated pages or a
copy-mode mapping: 3 or 4 for a buffer in one allocation, so 64 or more buffers, ten
times what four double-buffered connectors need. Without it, one-page DBUF_CREATEs
would fill the backend's descriptor table (332 of them at a 1024 limit) long before
`DEFAULT_PAGE_BUDGET`, and every guest's next request would fail.
"""


def mode_problem(width: int, height: int) -> str | None:
    """Why a connector cannot have a `width`x`height` mode, or None if it can."""
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        return f"resolution {width}x{height}: each side must be 1..{MAX_DIMENSION}"
    if width * height > MAX_MODE_PIXELS:
        return (
            f"resolution {width}x{height}: a 32-bpp frame of it exceeds the largest"
            f" display buffer ({MAX_BUFFER_SIZE >> 20} MiB, {MAX_MODE_PIXELS} pixels)"
        )
    return None
