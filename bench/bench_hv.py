"""Emulated hypervisor: event-channel round trip, mapping 2025 refs, and a copy check.

Each figure is printed beside a baseline measured in the same run:
- round trip: a C eventfd ping-pong between two processes (tests/c/evtchn_pingpong.c);
- map: one plain mmap of a memfd the same size, in one process;
- copy check: the same memory accounting applied to a deliberate copy.
"""

import mmap
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from bench.build import build_c
from pvdisplay.hv import PAGE_SIZE, Hypervisor
from pvdisplay.hv.local.client import LocalHypervisor
from pvdisplay.hv.local.launcher import DomainLauncher

ROUNDS = 20_000
WARMUP = 2_000
MAPS = 300
WIDTH, HEIGHT = 1920, 1080
FRAME_BYTES = WIDTH * HEIGHT * 4
FRAME_PAGES = -(-FRAME_BYTES // PAGE_SIZE)
C_SOURCE = Path(__file__).resolve().parent.parent / "tests" / "c" / "evtchn_pingpong.c"


def percentile(samples: list[int], fraction: float) -> int:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# -- event channel round trip --------------------------------------------------------


def ponger(hv: Hypervisor, control: Connection) -> None:
    port = hv.events.bind_unbound_port(control.recv())
    control.send(port)
    for _ in range(ROUNDS + WARMUP):
        hv.events.pending()
        hv.events.notify(port)
    control.recv()


def pinger(hv: Hypervisor, control: Connection) -> None:
    remote, remote_port = control.recv()
    port = hv.events.bind_interdomain(remote, remote_port)
    notify, pending, clock = hv.events.notify, hv.events.pending, time.perf_counter_ns
    samples = []
    for _ in range(ROUNDS + WARMUP):
        start = clock()
        notify(port)
        pending()
        samples.append(clock() - start)
    control.send((percentile(samples[WARMUP:], 0.5), percentile(samples[WARMUP:], 0.99)))


def c_round_trip() -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as build:
        binary = build_c(C_SOURCE, build)
        output = subprocess.run(
            [str(binary), str(ROUNDS)], check=True, capture_output=True, text=True
        ).stdout
    match = re.fullmatch(r"rounds=\d+ p50_ns=(\d+) p99_ns=(\d+)\n", output)
    if match is None:
        raise RuntimeError(f"unexpected output from the C baseline: {output!r}")
    return int(match[1]), int(match[2])


def python_round_trip(host: DomainLauncher) -> tuple[int, int]:
    pong = host.start_domain(f"{__name__}:ponger")
    ping = host.start_domain(f"{__name__}:pinger")
    pong.control.send(ping.domid)
    ping.control.send((pong.domid, pong.control.recv()))
    p50, p99 = ping.control.recv()
    pong.control.send("done")
    return int(p50), int(p99)


# -- mapping and copying -------------------------------------------------------------


@dataclass(frozen=True)
class ReaderReport:
    map_ns: tuple[int, int]
    mmap_ns: tuple[int, int]
    broker_bytes: int
    checksum: int
    anon_kb: int
    shmem_kb: int
    copy_anon_kb: int
    seen_late_write: bool
    reader_frame: int | None


def page_frame(address: int) -> int | None:
    """Physical frame behind a virtual address (readable with CAP_SYS_ADMIN only)."""
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(address // PAGE_SIZE * 8)
        entry = int.from_bytes(pagemap.read(8), "little")
    frame = entry & ((1 << 55) - 1)
    return frame if entry >> 63 and frame else None


def memory_kb() -> dict[str, int]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) for key in ("RssAnon", "RssShmem")}


def frame_writer(hv: Hypervisor, control: Connection) -> None:
    memory, refs = hv.grants.share(control.recv(), FRAME_PAGES)
    frame = memory.array(np.uint32, (HEIGHT, WIDTH))
    frame[:] = np.arange(WIDTH * HEIGHT, dtype=np.uint32).reshape(HEIGHT, WIDTH)
    control.send((refs, int(frame.sum(dtype=np.uint64)), page_frame(memory.address)))
    control.recv()
    frame[-1, -1] = 0xDEADBEEF
    control.send("written")
    control.recv()


def frame_reader(hv: Hypervisor, control: Connection) -> None:
    assert isinstance(hv, LocalHypervisor)
    writer, refs = control.recv()
    map_ns = []
    for _ in range(MAPS):
        start = time.perf_counter_ns()
        mapping = hv.grants.map(writer, refs, writable=False)
        map_ns.append(time.perf_counter_ns() - start)
        mapping.close()
    fd = os.memfd_create("baseline")
    os.ftruncate(fd, FRAME_PAGES * PAGE_SIZE)
    mmap_ns = []
    for _ in range(MAPS):
        start = time.perf_counter_ns()
        plain = mmap.mmap(fd, FRAME_PAGES * PAGE_SIZE, prot=mmap.PROT_READ)
        mmap_ns.append(time.perf_counter_ns() - start)
        plain.close()
    os.close(fd)

    before, received = memory_kb(), hv.received_bytes
    mapping = hv.grants.map(writer, refs, writable=False)
    broker_bytes = hv.received_bytes - received
    frame = mapping.array(np.uint32, (HEIGHT, WIDTH))
    checksum = int(frame.sum(dtype=np.uint64))
    after_read = memory_kb()
    control.send("mapped")
    assert control.recv() == "written"
    seen_late_write = int(frame[-1, -1]) == 0xDEADBEEF
    reader_frame = page_frame(mapping.address)
    copy = frame.copy()
    after_copy = memory_kb()
    control.send(
        ReaderReport(
            map_ns=(percentile(map_ns, 0.5), percentile(map_ns, 0.99)),
            mmap_ns=(percentile(mmap_ns, 0.5), percentile(mmap_ns, 0.99)),
            broker_bytes=broker_bytes,
            checksum=checksum,
            anon_kb=after_read["RssAnon"] - before["RssAnon"],
            shmem_kb=after_read["RssShmem"] - before["RssShmem"],
            copy_anon_kb=after_copy["RssAnon"] - after_read["RssAnon"],
            seen_late_write=seen_late_write,
            reader_frame=reader_frame,
        )
    )
    del copy, frame
    mapping.close()
    control.recv()


def map_and_copy(host: DomainLauncher) -> tuple[ReaderReport, int, int | None]:
    writer = host.start_domain(f"{__name__}:frame_writer")
    reader = host.start_domain(f"{__name__}:frame_reader")
    writer.control.send(reader.domid)
    refs, checksum, writer_frame = writer.control.recv()
    reader.control.send((writer.domid, refs))
    assert reader.control.recv() == "mapped"
    writer.control.send("write")
    reader.control.send(writer.control.recv())
    result: ReaderReport = reader.control.recv()
    for domain in (writer, reader):
        domain.control.send("done")
    return result, checksum, writer_frame


def us(ns: int) -> str:
    return f"{ns / 1000:7.1f} us"


def main() -> None:
    c_p50, c_p99 = c_round_trip()
    with DomainLauncher() as host:
        py_p50, py_p99 = python_round_trip(host)
        copy, checksum, writer_frame = map_and_copy(host)
    print(f"event channel round trip (notify, wait, notify back), {ROUNDS} rounds, 2 processes")
    print(f"  C eventfd ping-pong (baseline)   p50 {us(c_p50)}   p99 {us(c_p99)}")
    print(
        f"  pvdisplay.hv event channels      p50 {us(py_p50)}   p99 {us(py_p99)}"
        f"   p50 = {py_p50 / c_p50:.1f}x C (target <= 3x)"
    )
    (map_p50, map_p99), (mmap_p50, mmap_p99) = copy.map_ns, copy.mmap_ns
    print(f"map {FRAME_PAGES} refs (1920x1080 XRGB8888) as one view, {MAPS} maps")
    print(f"  plain mmap of one memfd (baseline)  p50 {us(mmap_p50)}   p99 {us(mmap_p99)}")
    print(
        f"  grants.map (request, checks, MAP_FIXED) p50 {us(map_p50)}   p99 {us(map_p99)}"
        "   (target < 2000 us)"
    )
    print(f"copy check: a {FRAME_BYTES}-byte frame written by one domain, read by the other")
    print(f"  bytes from the broker for the map: {copy.broker_bytes} (pixels never travel)")
    matches = "matches" if copy.checksum == checksum else "WRONG"
    print(f"  checksum of every pixel the reader read: {matches} the writer's")
    print(
        f"  reader memory after reading every pixel: RssAnon {copy.anon_kb:+} KiB,"
        f" RssShmem {copy.shmem_kb:+} KiB (the writer's pages, no private copy)"
    )
    print(
        "  same accounting of a deliberate frame.copy() (baseline):"
        f" RssAnon {copy.copy_anon_kb:+} KiB"
    )
    print(f"  a write made after mapping is seen without remapping: {copy.seen_late_write}")
    if writer_frame is not None and copy.reader_frame is not None:
        same = "same" if writer_frame == copy.reader_frame else "DIFFERENT"
        print(
            f"  physical page frame of pixel 0: writer {writer_frame:#x},"
            f" reader {copy.reader_frame:#x} ({same})"
        )
    shared = copy.seen_late_write and copy.anon_kb < FRAME_BYTES // 1024 // 8
    print(f"  bytes copied: {0 if shared else 'at least one frame'}")
