"""Event-page indices are published with ring.h's ordering, by the cores that use them.

displif's event page (`in_cons`, `in_prod`) and kbdif's shared page (`in_*`, `out_*`)
carry free-running indices next to their slots, like a ring.h ring. The cores must
access them as Linux xen-front and xen-kbdfront do: a producer writes its slots, then
publishes `prod` with a release; a consumer loads `prod` with an acquire, reads, then
publishes `cons` with a release. On x86 a plain access happens to work, so a run on it
cannot show a missing barrier. What can be shown is the accesses themselves: each core
runs in a child Python whose libatomic is tests/c/atomic_trace.c, which performs the
same seq-cst operations and records each one with the memory order asked for and a
copy of the page at that moment. An index read or written without libatomic is absent
from the trace.
"""

import ctypes
import json
import mmap
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from pvdisplay.display.front_core import ConnectorChannel
from pvdisplay.hv import Hypervisor
from pvdisplay.input.backend import FrontendRequests, InputDevice, VkbdFeatures
from pvdisplay.input.front import Keyboard
from pvdisplay.store.aio import AsyncClient
from pvdisplay.wire import displif, kbdif
from pvdisplay.wire.ring import XEN_PAGE_SIZE, init_shared_ring

# __ATOMIC_* memory orders
ACQUIRE, RELEASE, ACQ_REL, SEQ_CST = 2, 3, 4, 5
AT_LEAST_ACQUIRE = {ACQUIRE, ACQ_REL, SEQ_CST}
AT_LEAST_RELEASE = {RELEASE, ACQ_REL, SEQ_CST}

DISPLIF_FIELDS = {displif.IN_CONS_OFFSET: "in_cons", displif.IN_PROD_OFFSET: "in_prod"}
KBDIF_FIELDS = {
    kbdif.IN_CONS_OFFSET: "in_cons",
    kbdif.IN_PROD_OFFSET: "in_prod",
    kbdif.OUT_CONS_OFFSET: "out_cons",
    kbdif.OUT_PROD_OFFSET: "out_prod",
}
KEYS = [kbdif.Key(True, 30), kbdif.Key(False, 30), kbdif.Key(True, 48)]


@dataclass(frozen=True)
class Access:
    """One libatomic call on the page under test: which field, and the page it saw."""

    kind: str
    field: str
    value: int
    order: int
    page: bytes


# -- the child: runs one core against the tracing libatomic ----------------------------


class _TracedAccess(ctypes.Structure):
    _fields_ = (
        ("address", ctypes.c_uint64),
        ("value", ctypes.c_uint32),
        ("order", ctypes.c_int32),
        ("is_store", ctypes.c_int32),
        ("page", ctypes.c_uint8 * XEN_PAGE_SIZE),
    )


def _trace_of(page: mmap.mmap, fields: dict[int, str]) -> list[dict[str, Any]]:
    """Every recorded access to `fields` of `page`, oldest first."""
    tracer = ctypes.CDLL("libatomic.so.1")  # the handle pvdisplay.wire.atomics holds
    tracer.atomic_trace_entry.restype = ctypes.POINTER(_TracedAccess)
    pin = ctypes.c_char.from_buffer(page)
    base = ctypes.addressof(pin)
    del pin
    trace = []
    for index in range(tracer.atomic_trace_count()):
        entry = tracer.atomic_trace_entry(index).contents
        offset = entry.address - base
        if offset in fields:
            trace.append(
                {
                    "kind": "store" if entry.is_store else "load",
                    "field": fields[offset],
                    "value": entry.value,
                    "order": entry.order,
                    "page": bytes(entry.page).hex(),
                }
            )
    return trace


def _kbdif_backend() -> list[dict[str, Any]]:
    page = mmap.mmap(-1, XEN_PAGE_SIZE)
    device = InputDevice(VkbdFeatures("traced", 100, 100), FrontendRequests(), page)
    device.push(KEYS[:2])
    device.push(KEYS[2:])
    device.release()
    return _trace_of(page, KBDIF_FIELDS)


def _fill_ring(page: mmap.mmap, prod_offset: int, slots: list[tuple[int, bytes]]) -> None:
    # The peer's side, in plain stores so that the trace holds only the core's accesses.
    for offset, slot in slots:
        page[offset : offset + len(slot)] = slot
    struct.pack_into("=I", page, prod_offset, len(slots))


def _displif_frontend() -> list[dict[str, Any]]:
    ring, events = mmap.mmap(-1, XEN_PAGE_SIZE), mmap.mmap(-1, XEN_PAGE_SIZE)
    init_shared_ring(ring)
    channel = ConnectorChannel(ring, events)
    flips = [displif.PageFlipEvent(i, 0xC0 + i) for i in range(2)]
    _fill_ring(
        events,
        displif.IN_PROD_OFFSET,
        [(displif.in_ring_slot_offset(i), flip.encode()) for i, flip in enumerate(flips)],
    )
    channel.receive()
    channel.release()
    return _trace_of(events, DISPLIF_FIELDS)


class _OnePage:
    """Just enough of a hypervisor for `Keyboard` to allocate its page and take events."""

    domid = 1

    def __init__(self, page: mmap.mmap) -> None:
        self.grants = self
        self._page = page

    def alloc(self, pages: int) -> "_OnePage":
        return self

    def view(self) -> memoryview:
        return memoryview(self._page)


def _kbdif_frontend() -> list[dict[str, Any]]:
    page = mmap.mmap(-1, XEN_PAGE_SIZE)
    keyboard = Keyboard(
        cast(Hypervisor, _OnePage(page)),
        cast(AsyncClient, None),
        0,
        "backend",
        absolute=False,
        multi_touch=False,
    )
    _fill_ring(
        page,
        kbdif.IN_PROD_OFFSET,
        [(kbdif.in_ring_slot_offset(i), key.encode()) for i, key in enumerate(KEYS)],
    )
    assert keyboard.take() == KEYS
    return _trace_of(page, KBDIF_FIELDS)


SCENARIOS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "kbdif-backend": _kbdif_backend,
    "displif-frontend": _displif_frontend,
    "kbdif-frontend": _kbdif_frontend,
}


# -- the tests --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trace(
    compile_c: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], list[Access]]:
    library = compile_c("atomic_trace", "-shared", "-fPIC")
    directory = tmp_path_factory.mktemp("traced-libatomic")
    (directory / "libatomic.so.1").symlink_to(library)

    def run(scenario: str) -> list[Access]:
        child = subprocess.run(
            [sys.executable, __file__, scenario],
            env={**os.environ, "LD_LIBRARY_PATH": str(directory)},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert child.returncode == 0, child.stderr
        return [
            Access(a["kind"], a["field"], a["value"], a["order"], bytes.fromhex(a["page"]))
            for a in json.loads(child.stdout)
        ]

    return run


def traffic(accesses: list[Access]) -> list[tuple[str, str, int]]:
    return [(a.kind, a.field, a.value) for a in accesses]


def assert_acquire_release(accesses: list[Access]) -> None:
    for access in accesses:
        wanted = AT_LEAST_ACQUIRE if access.kind == "load" else AT_LEAST_RELEASE
        assert access.order in wanted, access


def test_kbdif_backend_publishes_in_prod_with_a_release_after_writing_the_slots(
    trace: Callable[[str], list[Access]],
) -> None:
    accesses = trace("kbdif-backend")
    out_ring_empty = [("load", "out_cons", 0), ("load", "out_prod", 0)]
    assert traffic(accesses) == [
        ("load", "in_prod", 0),  # attach
        *out_ring_empty,
        ("load", "in_cons", 0),  # room left by the guest, before any slot is written
        ("store", "in_prod", 2),
        *out_ring_empty,
        ("load", "in_cons", 0),
        ("store", "in_prod", 3),
    ]
    assert_acquire_release(accesses)
    for publication in (a for a in accesses if a.kind == "store"):
        offsets = [kbdif.in_ring_slot_offset(index) for index in range(publication.value)]
        covered = [publication.page[at : at + kbdif.IN_EVENT_SIZE] for at in offsets]
        written = [key.encode() for key in KEYS[: publication.value]]
        assert covered == written, "in_prod was published before the slots it covers"


def test_displif_frontend_takes_events_between_an_acquire_and_a_release(
    trace: Callable[[str], list[Access]],
) -> None:
    accesses = trace("displif-frontend")
    assert traffic(accesses) == [
        ("load", "in_cons", 0),  # attach
        ("load", "in_prod", 2),
        ("store", "in_cons", 2),
    ]
    assert_acquire_release(accesses)


def test_kbdif_frontend_takes_events_between_an_acquire_and_a_release(
    trace: Callable[[str], list[Access]],
) -> None:
    accesses = trace("kbdif-frontend")
    assert traffic(accesses) == [
        ("load", "in_prod", 3),
        ("load", "in_cons", 0),
        ("load", "in_cons", 0),
        ("store", "in_cons", 3),
    ]
    assert_acquire_release(accesses)


if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
