"""virtio-gpu and split-ring layouts and constants against the compiled Linux uapi headers.

tests/c/virtio_gpu_layout.c and virtio_gpu_ring_layout.c print offsetof/sizeof/signedness
of every member `pvdisplay.virtio.gpu_wire` and `pvdisplay.virtio.virtqueue` describe,
and the value of every constant they mirror from the headers.
"""

from collections.abc import Callable
from pathlib import Path

from c_layout import layout_mismatches, python_constants, run_c_report
from pvdisplay.virtio import gpu_wire, virtqueue

# Constants that are not in the headers (queue limits, cursor size) are not compared.
RING_CONSTANTS = [
    "VRING_DESC_F_NEXT",
    "VRING_DESC_F_WRITE",
    "VRING_DESC_F_INDIRECT",
    "VRING_AVAIL_F_NO_INTERRUPT",
    "VIRTIO_RING_F_INDIRECT_DESC",
    "VIRTIO_RING_F_EVENT_IDX",
    "DESC_ALIGN",
    "AVAIL_ALIGN",
    "USED_ALIGN",
    "AVAIL_RING_OFFSET",
    "USED_RING_OFFSET",
]


def test_gpu_layouts_match_the_uapi_header(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("virtio_gpu_layout"))
    assert len(report.fields) > 100
    assert layout_mismatches(gpu_wire, report) == []


def test_gpu_constants_match_the_uapi_header(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("virtio_gpu_layout"))
    ours = python_constants(gpu_wire)
    del ours["CURSOR_SIZE"], ours["BYTES_PER_PIXEL"]
    edid_offset = report.constants.pop("EDID_BUFFER_OFFSET")
    assert ours == report.constants
    assert int(edid_offset) + gpu_wire.EDID_BUFFER_SIZE == gpu_wire.RESP_EDID.struct.size


def test_a_planted_offset_error_is_caught(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("virtio_gpu_layout", "-DPLANT_OFFSET_ERROR=4"))
    assert layout_mismatches(gpu_wire, report) == [
        "struct virtio_gpu_transfer_to_host_2d offset (offset, size, signed): "
        "Python (40, 8, False), C (44, 8, False)"
    ]


def test_ring_layouts_and_flags_match_the_uapi_header(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("virtio_gpu_ring_layout"))
    assert layout_mismatches(virtqueue, report) == []
    ours = python_constants(virtqueue)
    assert {name: ours[name] for name in RING_CONSTANTS} == {
        name: report.constants[name] for name in RING_CONSTANTS
    }
    # vring_used_event()/vring_avail_event() for an 8-entry ring.
    assert virtqueue.used_event_offset(8) == report.constants["USED_EVENT_OFFSET_8"]
    assert virtqueue.avail_event_offset(8) == report.constants["AVAIL_EVENT_OFFSET_8"]
