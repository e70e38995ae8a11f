"""ring.h throughput: Python ends against each other and against C, beside C-to-C.

Each run moves COUNT requests and COUNT responses through one 4096-byte displif ring
(32 slots) on a memfd shared by two processes that notify each other over pipes, the
way event channels do. Every message is a full 64-byte payload; the C end checks
every byte it receives, the Python ends here do not. The baseline is
tests/c/ring_peer.c on both ends (the real ring.h macros, gcc -O2) in the same run.
Also printed: the cost of one index access through libatomic (what every ring
operation pays) beside a plain struct access.
"""

import mmap
import multiprocessing
import os
import select
import struct
import subprocess
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from bench.build import build_c
from pvdisplay.wire.ring import XEN_PAGE_SIZE, BackRing, FrontRing, init_shared_ring

COUNT = 200_000
SLOT_SIZE = 64
START = 2**32 - COUNT // 2  # cross the wrap half way
PEER_SOURCE = Path(__file__).resolve().parent.parent / "tests" / "c" / "ring_peer.c"


def payload(seq: int, is_response: bool) -> bytes:
    """What ring_peer.c sends and checks for message `seq`."""
    word = (seq * 0x9E3779B97F4A7C15 + is_response) % 2**64
    return struct.pack("<Q", seq) + word.to_bytes(8, "little") * 7


def sleep_on(evt_in: int) -> None:
    if not select.select([evt_in], [], [], 30)[0]:
        raise RuntimeError("ring stalled")
    if not os.read(evt_in, 64):
        raise RuntimeError("peer exited")


def python_front(fd: int, evt_in: int, evt_out: int) -> None:
    with mmap.mmap(fd, XEN_PAGE_SIZE) as page, FrontRing(page, SLOT_SIZE, START) as ring:
        sent = received = 0
        while received < COUNT:
            produced = min(ring.free_requests, COUNT - sent)
            for _ in range(produced):
                ring.new_request()[:] = payload(sent, False)
                sent += 1
            if produced and ring.push_requests():
                os.write(evt_out, b"!")
            consumed = 0
            while ring.take_response() is not None:
                consumed += 1
            received += consumed
            idle = not (produced or consumed or received == COUNT)
            if idle and not ring.final_check_for_responses():
                sleep_on(evt_in)


def python_back(fd: int, evt_in: int, evt_out: int) -> None:
    with mmap.mmap(fd, XEN_PAGE_SIZE) as page, BackRing(page, SLOT_SIZE, START) as ring:
        answered = 0
        while answered < COUNT:
            consumed = 0
            while (request := ring.take_request()) is not None:
                (seq,) = struct.unpack_from("<Q", request)
                ring.new_response()[:] = payload(seq, True)
                consumed += 1
            answered += consumed
            if consumed and ring.push_responses():
                os.write(evt_out, b"!")
            idle = not (consumed or answered == COUNT)
            if idle and not ring.final_check_for_requests():
                sleep_on(evt_in)


Peer = subprocess.Popen[bytes] | multiprocessing.process.BaseProcess


def spawn(peer: Path, kind: str, role: str, fd: int, events: tuple[int, int]) -> Peer:
    """Start one end; it sleeps on events[0] and notifies through events[1]."""
    evt_in, evt_out = events
    if kind == "python":
        target = python_front if role == "front" else python_back
        process = multiprocessing.get_context("fork").Process(
            target=target, args=(fd, evt_in, evt_out)
        )
        process.start()
        return process
    args = ["stream", role, str(fd), hex(START), str(COUNT), str(evt_in), str(evt_out), "7"]
    c_peer = subprocess.Popen(
        [str(peer), *args], stdout=subprocess.PIPE, pass_fds=(fd, evt_in, evt_out)
    )
    assert c_peer.stdout is not None
    if role == "front":
        c_peer.stdout.readline()  # "ready": the shared ring is initialised
    return c_peer


def succeeded(peer: Peer) -> bool:
    if isinstance(peer, subprocess.Popen):
        peer.communicate(timeout=120)
        return peer.returncode == 0
    peer.join(timeout=120)
    return peer.exitcode == 0


def run_pair(peer: Path, front: str, back: str) -> float:
    """Seconds for COUNT round trips between a `front` and a `back` ("c" or "python")."""
    fd = os.memfd_create("bench-ring")
    os.ftruncate(fd, XEN_PAGE_SIZE)
    to_back_r, to_back_w = os.pipe()
    to_front_r, to_front_w = os.pipe()
    if front == "python":
        with mmap.mmap(fd, XEN_PAGE_SIZE) as page:
            init_shared_ring(page, START)
    started = time.perf_counter()
    peers = [
        spawn(peer, front, "front", fd, (to_front_r, to_back_w)),
        spawn(peer, back, "back", fd, (to_back_r, to_front_w)),
    ]
    # The children hold their ends now; a peer that dies reads as EOF to the other.
    for end in (fd, to_back_r, to_back_w, to_front_r, to_front_w):
        os.close(end)
    if not all([succeeded(p) for p in peers]):
        raise RuntimeError(f"{front} front / {back} back: a peer failed")
    return time.perf_counter() - started


def per_call_ns(call: Callable[[], object], number: int = 200_000) -> float:
    return min(timeit.repeat(call, number=number, repeat=3)) / number * 1e9


def main() -> None:
    page = bytearray(XEN_PAGE_SIZE)
    init_shared_ring(page)
    front = FrontRing(page, SLOT_SIZE)
    index = struct.Struct("=I")
    print("index access (ns per call, best of 3):")
    for label, call in (
        ("unconsumed_responses() (1 libatomic load)", front.unconsumed_responses),
        ("push_requests() (1 store + 1 load)", front.push_requests),
        ("baseline struct.unpack_from (no ordering)", lambda: index.unpack_from(page, 8)),
    ):
        print(f"  {label:44s} {per_call_ns(call):7.0f}")
    front.release()

    with tempfile.TemporaryDirectory() as tmp:
        peer = build_c(PEER_SOURCE, tmp)
        print(f"{COUNT} requests + {COUNT} responses, 32-slot ring, two processes:")
        for front_kind, back_kind in (("c", "c"), ("python", "c"), ("c", "python"),
                                      ("python", "python")):  # fmt: skip
            seconds = run_pair(peer, front_kind, back_kind)
            label = f"{front_kind} front / {back_kind} back"
            baseline = " (baseline: ring.h macros)" if front_kind == back_kind == "c" else ""
            print(f"  {label:26s} {COUNT / seconds / 1e3:8.0f} k round trips/s{baseline}")
