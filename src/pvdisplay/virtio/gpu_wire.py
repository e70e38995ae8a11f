"""virtio-gpu 2D wire format (Linux uapi `linux/virtio_gpu.h`): commands, answers, config.

Every layout lists its C members in order (see `pvdisplay.wire.layout`); requests start
with `struct virtio_gpu_ctrl_hdr`, which each command layout skips ("" padding) because
`CTRL_HDR` decodes it. tests/c/virtio_gpu_layout.c checks every member, size and
constant here against the compiled header. virtio is little-endian.
"""

import enum
from typing import Final

from pvdisplay.wire.layout import Layout

VIRTIO_GPU_F_EDID: Final = 1
VIRTIO_GPU_FLAG_FENCE: Final = 1 << 0
VIRTIO_GPU_FLAG_INFO_RING_IDX: Final = 1 << 1
VIRTIO_GPU_MAX_SCANOUTS: Final = 16
VIRTIO_GPU_EVENT_DISPLAY: Final = 1 << 0
EDID_BUFFER_SIZE: Final = 1024
"""Bytes of `virtio_gpu_resp_edid.edid`."""


class CtrlType(enum.IntEnum):
    """`enum virtio_gpu_ctrl_type`: the 2D and cursor commands and their answers."""

    CMD_GET_DISPLAY_INFO = 0x0100
    CMD_RESOURCE_CREATE_2D = 0x0101
    CMD_RESOURCE_UNREF = 0x0102
    CMD_SET_SCANOUT = 0x0103
    CMD_RESOURCE_FLUSH = 0x0104
    CMD_TRANSFER_TO_HOST_2D = 0x0105
    CMD_RESOURCE_ATTACH_BACKING = 0x0106
    CMD_RESOURCE_DETACH_BACKING = 0x0107
    CMD_GET_CAPSET_INFO = 0x0108
    CMD_GET_CAPSET = 0x0109
    CMD_GET_EDID = 0x010A
    CMD_UPDATE_CURSOR = 0x0300
    CMD_MOVE_CURSOR = 0x0301
    RESP_OK_NODATA = 0x1100
    RESP_OK_DISPLAY_INFO = 0x1101
    RESP_OK_EDID = 0x1104
    RESP_ERR_UNSPEC = 0x1200
    RESP_ERR_OUT_OF_MEMORY = 0x1201
    RESP_ERR_INVALID_SCANOUT_ID = 0x1202
    RESP_ERR_INVALID_RESOURCE_ID = 0x1203
    RESP_ERR_INVALID_CONTEXT_ID = 0x1204
    RESP_ERR_INVALID_PARAMETER = 0x1205


class Format(enum.IntEnum):
    """`enum virtio_gpu_formats`, named by byte order in memory."""

    B8G8R8A8_UNORM = 1
    B8G8R8X8_UNORM = 2
    A8R8G8B8_UNORM = 3
    X8R8G8B8_UNORM = 4
    R8G8B8A8_UNORM = 67
    X8B8G8R8_UNORM = 68
    A8B8G8R8_UNORM = 121
    R8G8B8X8_UNORM = 134


FOURCC: Final[dict[Format, str]] = {
    # DRM fourccs describe a little-endian 32-bit word, virtio formats the bytes in
    # memory: B8G8R8X8 (bytes B, G, R, X) is the word X:R:G:B, DRM's XRGB8888.
    Format.B8G8R8A8_UNORM: "AR24",
    Format.B8G8R8X8_UNORM: "XR24",
    Format.A8R8G8B8_UNORM: "BA24",
    Format.X8R8G8B8_UNORM: "BX24",
    Format.R8G8B8A8_UNORM: "AB24",
    Format.X8B8G8R8_UNORM: "RX24",
    Format.A8B8G8R8_UNORM: "RA24",
    Format.R8G8B8X8_UNORM: "XB24",
}
"""The DRM format (`pvdisplay.wire.fourcc` text) of each virtio-gpu format."""

BYTES_PER_PIXEL: Final = 4
"""Every 2D format is 32 bits per pixel."""

_HDR: Final = ("", "24x")
_RECT: Final = (("r.x", "I"), ("r.y", "I"), ("r.width", "I"), ("r.height", "I"))

CTRL_HDR = Layout(
    "struct virtio_gpu_ctrl_hdr",
    ("type", "I"),
    ("flags", "I"),
    ("fence_id", "Q"),
    ("ctx_id", "I"),
    ("ring_idx", "B"),
    ("", "3x"),
)
RESOURCE_CREATE_2D = Layout(
    "struct virtio_gpu_resource_create_2d",
    _HDR,
    ("resource_id", "I"),
    ("format", "I"),
    ("width", "I"),
    ("height", "I"),
)
RESOURCE_UNREF = Layout("struct virtio_gpu_resource_unref", _HDR, ("resource_id", "I"), ("", "4x"))
SET_SCANOUT = Layout(
    "struct virtio_gpu_set_scanout", _HDR, *_RECT, ("scanout_id", "I"), ("resource_id", "I")
)
RESOURCE_FLUSH = Layout(
    "struct virtio_gpu_resource_flush", _HDR, *_RECT, ("resource_id", "I"), ("", "4x")
)
TRANSFER_TO_HOST_2D = Layout(
    "struct virtio_gpu_transfer_to_host_2d",
    _HDR,
    *_RECT,
    ("offset", "Q"),
    ("resource_id", "I"),
    ("", "4x"),
)
MEM_ENTRY = Layout("struct virtio_gpu_mem_entry", ("addr", "Q"), ("length", "I"), ("", "4x"))
RESOURCE_ATTACH_BACKING = Layout(
    "struct virtio_gpu_resource_attach_backing",
    _HDR,
    ("resource_id", "I"),
    ("nr_entries", "I"),
)
RESOURCE_DETACH_BACKING = Layout(
    "struct virtio_gpu_resource_detach_backing", _HDR, ("resource_id", "I"), ("", "4x")
)
GET_EDID = Layout("struct virtio_gpu_cmd_get_edid", _HDR, ("scanout", "I"), ("", "4x"))
UPDATE_CURSOR = Layout(
    "struct virtio_gpu_update_cursor",
    _HDR,
    ("pos.scanout_id", "I"),
    ("pos.x", "I"),
    ("pos.y", "I"),
    ("", "4x"),
    ("resource_id", "I"),
    ("hot_x", "I"),
    ("hot_y", "I"),
    ("", "4x"),
)
DISPLAY_ONE = Layout("struct virtio_gpu_display_one", *_RECT, ("enabled", "I"), ("flags", "I"))
RESP_DISPLAY_INFO = Layout(
    "struct virtio_gpu_resp_display_info",
    _HDR,
    *(
        (f"pmodes[{n}].{member}", "I")
        for n in range(VIRTIO_GPU_MAX_SCANOUTS)
        for member, _ in (*_RECT, ("enabled", "I"), ("flags", "I"))
    ),
)
RESP_EDID = Layout(
    "struct virtio_gpu_resp_edid",
    _HDR,
    ("size", "I"),
    ("", "4x"),
    ("", f"{EDID_BUFFER_SIZE}s"),
)
CONFIG = Layout(
    "struct virtio_gpu_config",
    ("events_read", "I"),
    ("events_clear", "I"),
    ("num_scanouts", "I"),
    ("num_capsets", "I"),
)

LAYOUTS: Final = (
    CTRL_HDR,
    RESOURCE_CREATE_2D,
    RESOURCE_UNREF,
    SET_SCANOUT,
    RESOURCE_FLUSH,
    TRANSFER_TO_HOST_2D,
    MEM_ENTRY,
    RESOURCE_ATTACH_BACKING,
    RESOURCE_DETACH_BACKING,
    GET_EDID,
    UPDATE_CURSOR,
    DISPLAY_ONE,
    RESP_DISPLAY_INFO,
    RESP_EDID,
    CONFIG,
)

CURSOR_SIZE: Final = 64
"""Cursor images are 64x64 pixels (Linux virtio-gpu and QEMU agree; the header is silent)."""
