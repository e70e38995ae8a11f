"""Python ring ends against a C peer built on the real xen/io/ring.h macros.

The C program (tests/c/ring_peer.c) maps the same memfd page. Two kinds of run:

* lockstep differential: a seeded script of operations is split into turns for the
  front and the back; every turn runs on the real pair (C + Python sharing the memfd)
  and on a shadow pair (Python + Python on a bytearray). Every answer (each notify
  decision, each "more work?", each count) and the whole page must match after every
  turn, so the Python end decides exactly what the C macros decide.
* free-running stream: both ends run concurrently, notifying each other over pipes the
  way event channels do, and move 100 000 requests and responses across the 2**32 wrap.
  A wrong notify decision leaves one end asleep forever; both ends detect that stall.
"""

import errno
import mmap
import os
import random
import select
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import pytest

from pvdisplay.wire.errors import ProtocolError
from pvdisplay.wire.ring import XEN_PAGE_SIZE, BackRing, FrontRing, init_shared_ring

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]

SLOT_SIZE = 64  # sizeof(union xen_displif_sring_entry)
NEAR_WRAP = 2**32 - 40_000
STALL_SECONDS = 30  # deadlock detector only; nothing asserts on elapsed time
FRONT_OPS = ("produce", "push", "consume", "final")
BACK_OPS = ("consume", "respond", "push", "final")


def payload(seq: int, is_response: bool) -> bytes:
    """Message `seq` of one direction, as ring_peer.c builds it."""
    word = (seq * 0x9E3779B97F4A7C15 + is_response) % 2**64
    return struct.pack("<Q", seq) + word.to_bytes(8, "little") * 7


class End(Protocol):
    def run_turn(self, ops: list[str]) -> list[str]: ...


@dataclass
class PyFront:
    ring: FrontRing
    sent: int = 0
    received: int = 0

    def run_turn(self, ops: list[str]) -> list[str]:
        return [self.run(*op.split()) for op in ops]

    def run(self, op: str, arg: str = "0") -> str:
        limit = int(arg)
        if op == "produce":
            produced = 0
            while produced < limit and not self.ring.full:
                self.ring.new_request()[:] = payload(self.sent, False)
                self.sent += 1
                produced += 1
            return f"produced {produced}"
        if op == "push":
            return f"notify {int(self.ring.push_requests())}"
        if op == "consume":
            consumed = 0
            while consumed < limit and (response := self.ring.take_response()) is not None:
                if response != payload(self.received, True):
                    return f"corrupt response {self.received}"
                self.received += 1
                consumed += 1
            return f"consumed {consumed}"
        assert op == "final"
        return f"final {int(self.ring.final_check_for_responses())}"


@dataclass
class PyBack:
    ring: BackRing
    taken: int = 0
    answered: int = 0

    def run_turn(self, ops: list[str]) -> list[str]:
        return [self.run(*op.split()) for op in ops]

    def run(self, op: str, arg: str = "0") -> str:
        limit = int(arg)
        if op == "consume":
            consumed = 0
            while consumed < limit and (request := self.ring.take_request()) is not None:
                if request != payload(self.taken, False):
                    return f"corrupt request {self.taken}"
                self.taken += 1
                consumed += 1
            return f"consumed {consumed}"
        if op == "respond":
            responded = 0
            while responded < limit and self.ring.unanswered_requests:
                self.ring.new_response()[:] = payload(self.answered, True)
                self.answered += 1
                responded += 1
            return f"responded {responded}"
        if op == "push":
            return f"notify {int(self.ring.push_responses())}"
        assert op == "final"
        return f"final {int(self.ring.final_check_for_requests())}"


@dataclass
class CEnd:
    proc: subprocess.Popen[str]
    answers: list[str] = field(default_factory=list)

    def run_turn(self, ops: list[str]) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("".join(f"{op}\n" for op in ops) + ".\n")
        self.proc.stdin.flush()
        answers = [self.proc.stdout.readline().strip() for _ in ops]
        if self.proc.stdout.readline().strip() != ".":
            pytest.fail(f"ring_peer lost step with {ops}: {answers}")
        self.answers += answers
        return answers


class DivergenceError(AssertionError):
    pass


@contextmanager
def shared_page() -> Iterator[tuple[int, mmap.mmap]]:
    fd = os.memfd_create("ring-test")
    try:
        os.ftruncate(fd, XEN_PAGE_SIZE)
        with mmap.mmap(fd, XEN_PAGE_SIZE) as page:
            yield fd, page
    finally:
        os.close(fd)


@contextmanager
def c_peer(
    binary: Path, role: str, fd: int, args: list[str], pass_fds: tuple[int, ...] = ()
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(binary), args[0], role, str(fd), *args[1:]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(fd, *pass_fds),
    )
    try:
        if role == "front":
            wait_ready(proc)
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "ready\n":
        pytest.fail(f"ring_peer did not start: {line!r}")


def random_turn(rng: random.Random, ring_size: int) -> tuple[str, list[str]]:
    side = rng.choice(("front", "back"))
    names = FRONT_OPS if side == "front" else BACK_OPS
    ops = []
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(names)
        needs_count = name in ("produce", "consume", "respond")
        ops.append(f"{name} {rng.randint(1, ring_size + 2)}" if needs_count else name)
    return side, ops


def differential_run(binary: Path, c_role: str, start: int, messages: int, seed: int) -> list[str]:
    """Run a seeded script until `messages` round trips; return the C end's answers."""
    rng = random.Random(seed)
    shadow_page = bytearray(XEN_PAGE_SIZE)
    init_shared_ring(shadow_page, start)
    shadow_front = PyFront(FrontRing(shadow_page, SLOT_SIZE, start))
    shadow: dict[str, End] = {
        "front": shadow_front,
        "back": PyBack(BackRing(shadow_page, SLOT_SIZE, start)),
    }
    with shared_page() as (fd, page), ExitStack() as rings:
        if c_role == "back":
            init_shared_ring(page, start)
            py_end: End = PyFront(rings.enter_context(FrontRing(page, SLOT_SIZE, start)))
        c_end = CEnd(rings.enter_context(c_peer(binary, c_role, fd, ["script", hex(start)])))
        if c_role == "front":
            py_end = PyBack(rings.enter_context(BackRing(page, SLOT_SIZE, start)))
        real: dict[str, End] = {c_role: c_end, "back" if c_role == "front" else "front": py_end}
        turn = 0
        while shadow_front.received < messages:
            side, ops = random_turn(rng, shadow_front.ring.size)
            expected = shadow[side].run_turn(ops)
            answers = real[side].run_turn(ops)
            if answers != expected:
                raise DivergenceError(
                    f"turn {turn} ({side} {ops}): real {answers}, shadow {expected}"
                )
            if page[:] != shadow_page:
                raise DivergenceError(f"turn {turn}: pages differ after {side} {ops}")
            turn += 1
    return c_end.answers


@pytest.mark.parametrize("c_role", ["front", "back"])
def test_python_decides_exactly_like_ring_h_macros(
    compile_c: Callable[..., Path], c_role: str
) -> None:
    answers = differential_run(compile_c("ring_peer"), c_role, NEAR_WRAP, 100_000, seed=1)
    # Both outcomes of every decision were exercised, so agreement is not vacuous.
    for answer in ("notify 0", "notify 1", "final 0", "final 1"):
        assert answer in answers


def test_planted_wrong_notify_decision_is_caught(compile_c: Callable[..., Path]) -> None:
    binary = compile_c("ring_peer", "-DPLANT_FLIP_NOTIFY=300")
    with pytest.raises(DivergenceError, match="notify"):
        differential_run(binary, "back", NEAR_WRAP, 100_000, seed=1)


def test_backend_publishing_unrequested_responses_is_refused(
    compile_c: Callable[..., Path],
) -> None:
    with shared_page() as (fd, page):
        init_shared_ring(page, NEAR_WRAP)
        with (
            FrontRing(page, SLOT_SIZE, NEAR_WRAP) as ring,
            c_peer(compile_c("ring_peer"), "back", fd, ["script", hex(NEAR_WRAP)]) as proc,
        ):
            front, back = PyFront(ring), CEnd(proc)
            front.run_turn(["produce 5", "push"])
            back.run_turn(["consume 5", "respond 5", "push"])
            assert front.run_turn(["consume 5"]) == ["consumed 5"]
            back.run_turn([f"forge {(NEAR_WRAP + 6) % 2**32}"])
            with pytest.raises(ProtocolError) as caught:
                front.ring.take_response()
            assert caught.value.errno == errno.EIO


def test_frontend_publishing_more_than_a_ring_is_refused(
    compile_c: Callable[..., Path],
) -> None:
    with (
        shared_page() as (fd, page),
        c_peer(compile_c("ring_peer"), "front", fd, ["script", hex(NEAR_WRAP)]) as proc,
        BackRing(page, SLOT_SIZE, NEAR_WRAP) as ring,
    ):
        front, back = CEnd(proc), PyBack(ring)
        front.run_turn(["produce 3", "push"])
        assert back.run_turn(["consume 9"]) == ["consumed 3"]
        front.run_turn([f"forge {(NEAR_WRAP + back.ring.size + 1) % 2**32}"])
        with pytest.raises(ProtocolError) as caught:
            back.ring.final_check_for_requests()
        assert caught.value.errno == errno.EIO


# ---- free-running stream ----


@dataclass
class Wakeups:
    """A pair of pipe ends standing in for an event channel."""

    evt_in: int
    evt_out: int
    notifies: int = 0
    events: int = 0
    waits: int = 0

    def notify(self, needed: bool) -> None:
        if needed:
            self.notifies += 1
            os.write(self.evt_out, b"!")

    def sleep(self) -> None:
        self.waits += 1
        readable, _, _ = select.select([self.evt_in], [], [], STALL_SECONDS)
        if not readable:
            pytest.fail(f"stalled: no event for {STALL_SECONDS} s (lost notification?)")
        got = os.read(self.evt_in, 64)
        if not got:
            raise ChildProcessError("the C peer exited while we waited for its event")
        self.events += len(got)


def stream_front(ring: FrontRing, count: int, wake: Wakeups, rng: random.Random) -> None:
    sent = received = 0
    while received < count:
        produced = 0
        for _ in range(min(rng.randint(1, ring.size), count - sent, ring.free_requests)):
            ring.new_request()[:] = payload(sent, False)
            sent += 1
            produced += 1
        if produced:
            wake.notify(ring.push_requests())
        consumed = 0
        while (response := ring.take_response()) is not None:
            assert response == payload(received, True), f"response {received} corrupt"
            received += 1
            consumed += 1
        if produced or consumed or received == count:
            continue
        if not ring.final_check_for_responses():
            wake.sleep()


def stream_back(ring: BackRing, count: int, wake: Wakeups, rng: random.Random) -> None:
    answered = taken = 0
    while answered < count:
        consumed = 0
        while (request := ring.take_request()) is not None:
            assert request == payload(taken, False), f"request {taken} corrupt"
            taken += 1
            consumed += 1
        while ring.unanswered_requests:
            for _ in range(min(rng.randint(1, ring.size), ring.unanswered_requests)):
                ring.new_response()[:] = payload(answered, True)
                answered += 1
            wake.notify(ring.push_responses())
        if consumed or answered == count:
            continue
        if not ring.final_check_for_requests():
            wake.sleep()


def drain(fd: int) -> int:
    os.set_blocking(fd, False)
    try:
        return len(os.read(fd, 1 << 20))
    except BlockingIOError:
        return 0


def c_stderr(proc: subprocess.Popen[str]) -> str:
    proc.wait(timeout=60)
    return proc.stderr.read() if proc.stderr else ""


def c_summary(stdout: IO[str] | None) -> dict[str, int]:
    assert stdout is not None
    words = stdout.readline().split()
    assert words[:1] == ["done"], f"ring_peer said {words}"
    return {key: int(value) for key, value in (word.split("=") for word in words[1:])}


@pytest.mark.parametrize("c_role", ["front", "back"])
def test_stream_100k_messages_across_wrap(compile_c: Callable[..., Path], c_role: str) -> None:
    count = 100_000
    to_c_read, to_c_write = os.pipe()
    from_c_read, from_c_write = os.pipe()
    wake = Wakeups(evt_in=from_c_read, evt_out=to_c_write)
    rng = random.Random(2)
    c_args = ["stream", hex(NEAR_WRAP), str(count), str(to_c_read), str(from_c_write), "7"]
    try:
        with shared_page() as (fd, page), ExitStack() as rings:
            if c_role == "back":
                init_shared_ring(page, NEAR_WRAP)
                front = rings.enter_context(FrontRing(page, SLOT_SIZE, NEAR_WRAP))
            binary = compile_c("ring_peer")
            proc = rings.enter_context(
                c_peer(binary, c_role, fd, c_args, (to_c_read, from_c_write))
            )
            # Only the C end may write events to us now, so its exit reads as EOF.
            os.close(from_c_write)
            try:
                if c_role == "back":
                    stream_front(front, count, wake, rng)
                else:
                    back = rings.enter_context(BackRing(page, SLOT_SIZE, NEAR_WRAP))
                    stream_back(back, count, wake, rng)
            except ChildProcessError as gone:
                pytest.fail(f"{gone}: {c_stderr(proc)}")
            assert proc.wait(timeout=60) == 0, c_stderr(proc)
            c_counts = c_summary(proc.stdout)
        # Every notification either side decided on was delivered, none invented.
        assert c_counts["notifies"] == wake.events + drain(from_c_read)
        assert wake.notifies == c_counts["events"] + drain(to_c_read)
        assert c_counts["pushes"] > 0
    finally:
        for end in (to_c_write, from_c_read, to_c_read):
            os.close(end)
