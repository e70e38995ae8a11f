"""ring.h layout proven against gcc: header fields, ring sizes, SHARED_RING_INIT bytes."""

import subprocess
from collections.abc import Callable
from pathlib import Path

from pvdisplay.wire.ring import (
    SRING_FIELDS,
    SRING_HEADER_SIZE,
    XEN_PAGE_SIZE,
    init_shared_ring,
    ring_size,
)

DISPLIF_SLOT_SIZE = 64  # sizeof(union xen_displif_sring_entry), also checked below


def c_report(binary: Path) -> dict[str, str]:
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def layout_mismatches(report: dict[str, str]) -> list[str]:
    """Every way the compiled ring.h differs from pvdisplay.wire.ring."""
    expected = {
        "sizeof.RING_IDX": "4",
        "sizeof.entry": str(DISPLIF_SLOT_SIZE),
        "sizeof.sring": str(SRING_HEADER_SIZE + DISPLIF_SLOT_SIZE),  # ring[1]
        "offsetof.ring": str(SRING_HEADER_SIZE),
        "const_ring_size.displif.4096": str(ring_size(DISPLIF_SLOT_SIZE, XEN_PAGE_SIZE)),
    }
    expected |= {f"field.{name}": f"{off},{size}" for name, (off, size) in SRING_FIELDS.items()}
    ring_sizes = {key: value for key, value in report.items() if key.startswith("ring_size.")}
    for key in ring_sizes:
        _, slot, area = key.split(".")
        expected[key] = str(ring_size(int(slot), int(area)))
    page = bytearray(b"\xaa" * XEN_PAGE_SIZE)
    init_shared_ring(page)
    expected["shared_ring_init"] = page.hex()

    problems = [
        f"{key}: C says {report.get(key)}, Python says {value}"
        for key, value in expected.items()
        if report.get(key) != value
    ]
    if len(ring_sizes) < 40:
        problems.append(f"C printed only {len(ring_sizes)} ring sizes")
    return problems


def test_python_layout_matches_compiled_ring_h(compile_c: Callable[..., Path]) -> None:
    assert layout_mismatches(c_report(compile_c("ring_layout"))) == []


def test_header_fields_tile_the_64_byte_header() -> None:
    end = 0
    for offset, size in sorted(SRING_FIELDS.values()):
        assert offset == end
        end = offset + size
    assert end == SRING_HEADER_SIZE


def test_planted_wrong_offset_is_caught(compile_c: Callable[..., Path]) -> None:
    report = c_report(compile_c("ring_layout", "-DPLANT_WRONG_OFFSET"))
    assert layout_mismatches(report) == ["field.rsp_prod: C says 12,4, Python says 8,4"]
