"""Hostile guests and clients against the emulated host: one line per attack.

Each attack of tests/hostile runs against a host whose honest demo guest flips at 60 Hz.
For each: whether the broker or the backend died (crashes), whether the attacker or the
host stopped answering (hangs), what the broker and the backend still held once the
attacker was gone (leaks: descriptors, tables, the backend's usage), and the honest
guest's flips a second while the attack runs and holds what it took (from its first
request, once its processes are up, for 2 s at least) as a share of its flips a second
in a quiet window measured just before (the same-run baseline). Where an attacker
exhausts a budget, an honest guest (the prober, connected throughout) tries its own
operations while the attacker holds what it took, and the line says how many failed.
Each line ends with the seconds it took.
"""

import collections
import errno
import functools
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "hostile"))

import core_fuzz
from hostile_agents import Remote
from hostile_world import Hostile, guest, world
from vhost_user_front import front_end
from vnc_client import Watcher, update_request

from guest_vm import wait_for_socket
from pvdisplay import xenbus
from pvdisplay.hv.local.launcher import DomainProcess
from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.server import MAX_CLIENTS
from pvdisplay.toolstack import vkb as vkb_config
from pvdisplay.toolstack.host import RunningGuest
from pvdisplay.wire import displif, xs_wire
from rigs import PATIENCE, wait_until

WINDOW = 2.0
"""Seconds of honest flips counted under each attack, and in the quiet window before it."""
KILLED_GUESTS = 100
KILLED_AT_ONCE = 5
"""Victims started, seen flipping and SIGKILLed together."""
FUZZED = 1_000_000
"""displif requests and kbdif events each coverage-guided fuzzer executes."""
REAL_FUZZED = 200_000
"""Random displif requests a real guest sends to the real backend beside the fuzzers (more
would take the CPU the fuzzers need on a 2-core machine)."""
REAL_FUZZ_CHUNK = 20_000
FUZZ_PATIENCE = 600.0
XS_FUZZED = 100_000
"""Malformed XenStore messages one guest sends on its own socket."""
RESTARTS = 100
GREEDY = 400
HONEST_FLIPS = 20
"""Flips in the honest operations tried while an attacker holds what it took."""
ATTACKER = "hostile_agents:agent"
HEADER = struct.Struct("<II")
GARBAGE = [
    [(b"\x00\x01", 0)],
    [(HEADER.pack(5, 0) + b"hello", 0)],
    [(HEADER.pack(2, 0) + b"[]", 0)],
    [(HEADER.pack(1 << 30, 0) + b"{", 0)],
    [(HEADER.pack(2, 100_000) + b"{}", 0)],
    [(HEADER.pack(2, 500) + b"{}", 250), (b"+", 250)],
    [(HEADER.pack(2, 250) + b"{", 250), (b"x", 0)],
]

Stop = Callable[[], None]
Attack = Callable[[Hostile, "Bout"], tuple[str, Stop]]


class Bout:
    """One attack's measurement: honest flips are counted from `begin()`, which an attack
    calls once its processes are up (starting a Python process is not the attack), or
    from its first step."""

    def __init__(self, hostile: Hostile, scratch: Path, prober: Remote) -> None:
        self.hostile = hostile
        self.scratch = scratch
        self.prober = prober
        self.crashes = self.hangs = 0
        """Found by the attack itself (the fuzzers' crashing and hanging inputs)."""
        self.honest: tuple[int, int] | None = None
        """Honest operations tried while the attacker held what it took, and failed."""
        self.begin()

    def probe(self) -> None:
        """An honest guest's operations now, while the attacker holds its take."""
        self.honest = self.prober("honest_operations", HONEST_FLIPS)

    def begin(self) -> None:
        self.first, self.started = self.hostile.frames(), time.monotonic()

    def flips_per_window(self) -> float:
        """Honest flips since `begin()`, held for WINDOW at least, scaled to WINDOW."""
        time.sleep(max(0.0, WINDOW - (time.monotonic() - self.started)))
        elapsed = time.monotonic() - self.started
        return (self.hostile.frames() - self.first) * WINDOW / elapsed


@dataclass
class Outcome:
    crashes: int
    hangs: int
    leaks: dict[str, int]
    share: float
    """Honest flips a second under the attack over those in the quiet window before it."""
    detail: str
    honest: tuple[int, int] | None
    seconds: float


def _code(number: int | None) -> str:
    return errno.errorcode.get(number or 0, str(number))


def _kill_domain(hostile: Hostile, domain: DomainProcess) -> Stop:
    def stop() -> None:
        domain.kill()
        domain.wait(PATIENCE)
        hostile.host.hv.wait_released(domain.domid, PATIENCE)

    return stop


def _kill_guest(hostile: Hostile, running: RunningGuest) -> Stop:
    def stop() -> None:
        running.process.kill()
        hostile.host.wait_guest_destroyed(running.domid, PATIENCE)

    return stop


def share_loop(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    domain = hostile.host.hv.start_domain(ATTACKER)
    made, code = Remote(domain.control)("share_until_refused", 0, 50_000)
    bout.probe()
    return f"{made} one-page shares, then {_code(code)}", _kill_domain(hostile, domain)


def port_loop(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    domain = hostile.host.hv.start_domain(ATTACKER)
    made, code = Remote(domain.control)("bind_until_refused", 0, 50_000)
    bout.probe()
    return f"{made} ports, then {_code(code)}", _kill_domain(hostile, domain)


def _flood(spec: str) -> Attack:
    def attack(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
        running = hostile.host.start_guest(
            guest(f"flood{time.monotonic_ns()}", f"{spec}connectors=c0:64x48"),
            "hostile_agents:dbuf_flood",
            ("cue",),
        )
        control = running.process.control
        if not control.poll(PATIENCE) or control.recv() != "connected":
            raise TimeoutError("the flooding guest did not connect")
        bout.begin()
        control.send("go")
        if not running.process.control.poll(PATIENCE):
            raise TimeoutError("the flooding guest did not report")
        made, code = running.process.control.recv()
        bout.probe()
        return f"{made} one-page DBUF_CREATEs, then {_code(code)}", _kill_guest(hostile, running)

    return attack


def deaf_guest(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    log = bout.scratch / "host.log"
    lines_before = _log_lines(log)
    running = hostile.host.start_guest(
        guest(f"deaf{time.monotonic_ns()}"), "hostile_agents:raw_guest"
    )
    raw = Remote(running.process.control)
    raw("connect", 1)
    bout.begin()
    flips = 4 * displif.IN_RING_LEN
    raw("flips_unread", flips)
    bout.probe()
    lines = _log_lines(log) - lines_before
    detail = f"{flips - displif.IN_RING_LEN} events dropped, {lines} log lines"
    return detail, _kill_guest(hostile, running)


def _log_lines(log: Path) -> int:
    return sum("event ring full" in line for line in log.read_text().splitlines())


def fuzzers(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    """The coverage-guided fuzzers (tests/hostile/core_fuzz.py), each in a domain of the
    host: displif requests on a DisplayDevice of the fuzzer's own domain (real grants and
    exports through the broker), kbdif events on an InputDevice; beside them a real
    guest sends random requests to the real backend until both are done."""
    hv = hostile.host.hv
    running = hostile.host.start_guest(
        guest(f"fuzz{time.monotonic_ns()}"), "hostile_agents:raw_guest"
    )
    raw = Remote(running.process.control)
    raw("connect", 1)
    bout.begin()
    domains = [
        hv.start_domain(f"core_fuzz:{entry}", str(FUZZED), "1")
        for entry in ("fuzz_display", "fuzz_input")
    ]
    statuses: collections.Counter[int] = collections.Counter()
    while sum(statuses.values()) < REAL_FUZZED and not all(d.control.poll() for d in domains):
        statuses.update(raw("fuzz", REAL_FUZZ_CHUNK, sum(statuses.values())))
    reports: list[core_fuzz.Report] = [_report(domain) for domain in domains]
    for domain in domains:
        domain.kill()
        domain.wait(PATIENCE)
        hv.wait_released(domain.domid, PATIENCE)
    bout.crashes += sum(report.crashes for report in reports)
    bout.hangs += sum(report.hangs for report in reports)
    display, keyboard = reports
    sent = sum(statuses.values())
    detail = (
        f"displif: {_fuzzed(display)}; kbdif: {_fuzzed(keyboard)}; beside them a real guest's"
        f" {sent:,} random requests: {_statuses(statuses)}"
    )
    if display.first_crash or keyboard.first_crash:
        detail += f"; first crash: {display.first_crash or keyboard.first_crash}"
    return detail, _kill_guest(hostile, running)


def _report(domain: DomainProcess) -> core_fuzz.Report:
    if not domain.control.poll(FUZZ_PATIENCE):
        raise TimeoutError(f"the fuzzer in domain {domain.domid} did not report")
    report: core_fuzz.Report = domain.control.recv()
    return report


def _fuzzed(report: core_fuzz.Report) -> str:
    return (
        f"{report.units:,} in {report.inputs:,} inputs, {report.arcs} arcs, corpus"
        f" {report.corpus}, {_statuses(report.statuses)}"
    )


def _statuses(statuses: dict[int, int]) -> str:
    return " ".join(f"{_status(status)}:{count}" for status, count in sorted(statuses.items()))


def _status(status: int) -> str:
    return "0" if status == 0 else f"-{_code(-status)}"


def xenstore_garbage(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    """Malformed XenStore messages on a guest's own socket: random types (known or not),
    random payloads, now and then a length past the maximum; each answered or the
    connection closed, then the next on a fresh connection."""
    running = hostile.host.start_guest(guest(f"xs{time.monotonic_ns()}"), "hostile_agents:idle")
    path = str(hostile.host.domain_socket(running.domid))
    rng = random.Random(3)
    answered = closed = 0
    sock = _xs_connect(path)
    bout.begin()
    for number in range(1, XS_FUZZED + 1):
        kind = rng.randrange(32)
        payload = rng.randbytes(rng.randrange(64))
        length = len(payload) if rng.random() < 0.99 else rng.randrange(1 << 32)
        try:
            sock.sendall(xs_wire.HEADER.pack(kind, number, 0, length) + payload)
            answered += _xs_answer(sock, number)
        except (ConnectionError, EOFError):
            closed += 1
        else:
            if length == len(payload):
                continue
            # Answered E2BIG; the stream is then the oversized payload's until its end.
        sock.close()
        sock = _xs_connect(path)
    sock.close()
    return f"{answered} answered, {closed} connections closed", _kill_guest(hostile, running)


def _xs_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PATIENCE)
    sock.connect(path)
    return sock


def _xs_answer(sock: socket.socket, number: int) -> bool:
    """Read messages until the answer to request `number` (watch events come between)."""
    while True:
        kind, req_id, _, length = xs_wire.HEADER.unpack(_xs_read(sock, xs_wire.HEADER.size))
        _xs_read(sock, length)
        if req_id == number and kind != xs_wire.MessageType.WATCH_EVENT:
            return True


def _xs_read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("xenstored closed the connection")
        data += chunk
    return data


def kbd_garbage(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    running = hostile.host.start_guest(
        guest(f"kbd{time.monotonic_ns()}", vkb=True), "hostile_agents:kbd_garbage"
    )
    if not running.process.control.poll(PATIENCE) or running.process.control.recv() != "sent":
        raise TimeoutError("the keyboard guest did not report")
    state = f"{xenbus.backend_path(0, vkb_config.KIND, running.domid, 0)}/{xenbus.FIELD_STATE}"
    wait_until(
        lambda: int(hostile.host.xs.read(state)) == xenbus.XenbusState.CLOSING,
        "the backend to close the keyboard",
    )
    return "out event, bad in_cons, 10,000 notifies: keyboard closed", _kill_guest(hostile, running)


def watch_flood(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    running = hostile.host.start_guest(
        guest(f"watch{time.monotonic_ns()}"), "hostile_agents:watch_flood"
    )
    if not running.process.control.poll(PATIENCE):
        raise TimeoutError("the watching guest did not report")
    made, code = running.process.control.recv()
    bout.probe()
    return f"{made} XenStore watches, then {_code(code)}", _kill_guest(hostile, running)


def broken_framing(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    killed = 0
    for records in GARBAGE:
        domain = hostile.host.hv.start_domain(ATTACKER)
        domain.control.send(("send_records", (records,)))
        killed += domain.wait(PATIENCE) == -signal.SIGKILL
        hostile.host.hv.wait_released(domain.domid, PATIENCE)
    return f"{killed}/{len(GARBAGE)} framing breakers killed", lambda: None


def planes_flood(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    flood = []
    for _ in range(3 * MAX_CLIENTS):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(str(hostile.host.planes_socket))
        flood.append(sock)
    bout.probe()

    def stop() -> None:
        for sock in flood:
            sock.close()

    return f"{len(flood)} local planes connections for {MAX_CLIENTS} places", stop


def killed_mid_flip(hostile: Hostile, bout: Bout) -> tuple[str, Stop]:
    for first in range(0, KILLED_GUESTS, KILLED_AT_ONCE):
        victims = [
            hostile.host.start_guest(guest(f"victim{number}"), "pvdisplay.guests.demo:run")
            for number in range(first, first + KILLED_AT_ONCE)
        ]
        for running in victims:
            wait_until(functools.partial(_flipped, hostile, running.domid), "a victim to flip")
        for running in victims:
            running.process.kill()
        for running in victims:
            hostile.host.wait_guest_destroyed(running.domid, PATIENCE)
    return f"{KILLED_GUESTS} guests SIGKILLed mid-flip, {KILLED_AT_ONCE} at once", lambda: None


def _flipped(hostile: Hostile, domid: int) -> bool:
    with PlaneClient(hostile.host.planes_socket) as client:
        return any(plane.domid == domid and plane.frame > 2 for plane in client.list())


ATTACKS: list[tuple[str, Attack]] = [
    ("broker: share(0, 1) in a loop", share_loop),
    ("broker: bind_unbound_port in a loop", port_loop),
    ("broker: broken framing (7 kinds)", broken_framing),
    ("display: 1-page DBUF_CREATE flood", _flood("")),
    ("display: 1-page DBUF_CREATE flood, be-alloc", _flood("be-alloc=1,")),
    ("display: event page never read", deaf_guest),
    ("fuzz: 10^6 displif requests, 10^6 kbdif events", fuzzers),
    ("input: garbage on the kbdif page", kbd_garbage),
    ("xenstored: 10,000 watches", watch_flood),
    (f"xenstored: {XS_FUZZED:,} malformed messages", xenstore_garbage),
    ("planes socket: 3x its clients", planes_flood),
    (f"guests killed mid-flip ({KILLED_GUESTS})", killed_mid_flip),
]


def _run(hostile: Hostile, scratch: Path, prober: Remote, attack: Attack) -> Outcome:
    host = hostile.host
    backend, broker = host.backend, host.hv.broker_pid
    quiet = _flips_in(hostile, WINDOW)
    before = hostile.resources()
    hangs = 0
    detail = ""
    started = time.monotonic()
    bout = Bout(hostile, scratch, prober)
    try:
        detail, stop = attack(hostile, bout)
        under = bout.flips_per_window()
        stop()
    except TimeoutError as exc:
        hangs, under, detail = 1, 0, str(exc)
    crashes = int(host.backend is not backend or backend is None or backend.returncode is not None)
    crashes += int(not _alive(broker)) + bout.crashes
    hangs += bout.hangs
    leaks: dict[str, int] = {}
    try:
        wait_until(lambda: hostile.resources() == before, "resources to return")
    except TimeoutError:
        after = hostile.resources()
        leaks = {k: after[k] - before[k] for k in before if after.get(k) != before[k]}
    share = under / quiet if quiet else 0.0
    seconds = time.monotonic() - started
    return Outcome(crashes, hangs, leaks, share, detail, bout.honest, seconds)


def _flips_in(hostile: Hostile, seconds: float) -> int:
    start = hostile.frames()
    time.sleep(seconds)
    return hostile.frames() - start


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _print(name: str, outcome: Outcome) -> None:
    leaks = ", ".join(f"{k} {v:+d}" for k, v in outcome.leaks.items()) or "none"
    honest = ""
    if outcome.honest is not None:
        tried, failed = outcome.honest
        honest = f"  honest operations failed {failed}/{tried}"
    print(
        f"{name:46} crashes {outcome.crashes}  hangs {outcome.hangs}  leaks {leaks}"
        f"  honest flips {outcome.share:6.1%} of quiet{honest}  ({outcome.detail};"
        f" {outcome.seconds:.0f} s)",
        flush=True,
    )


def vhost_user_shrink(scratch: Path) -> None:
    listen, planes = scratch / "gpu.sock", scratch / "gpu-planes.sock"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "pvdisplay"), "--log-level", "error",
         "vhost-user-gpu", "--socket-path", str(listen), "--planes-socket", str(planes)],
    )  # fmt: skip
    try:
        wait_for_socket(planes, process)
        wait_for_socket(listen, process)
        dropped = 0
        for _ in range(10):
            sock, ram, kick = front_end(listen, sealing=False)
            os.ftruncate(ram, 0)
            os.eventfd_write(kick, 1)
            dropped += sock.recv(64) == b""
            for fd in (ram, kick):
                os.close(fd)
            sock.close()
        crashes = int(process.poll() is not None)
        print(
            f"{'vhost-user: guest memory shrunk (10 times)':46} crashes {crashes}  hangs 0"
            f"  leaks none  ({dropped}/10 front-ends dropped, process alive)",
            flush=True,
        )
    finally:
        process.terminate()
        process.wait(PATIENCE)


def backend_restarts(hostile: Hostile) -> None:
    """Kill the backend under a live, flipping guest; each time, how long until the
    guest shows a new frame through the new backend."""
    host = hostile.host
    slowest, reconnected = 0.0, 0
    began = time.monotonic()
    for _ in range(RESTARTS):
        started = time.monotonic()
        host.restart_backend()
        try:
            wait_until(lambda: _new_backend_frames(hostile) > 2, "the guest to reconnect")
        except TimeoutError:
            continue
        reconnected += 1
        slowest = max(slowest, time.monotonic() - started)
    print(
        f"{f'backend restarts ({RESTARTS}) under a live guest':46} crashes 0  hangs"
        f" {RESTARTS - reconnected}  reconnects {reconnected}/{RESTARTS},"
        f" slowest {slowest:.2f} s from kill to the next frame shown"
        f" ({time.monotonic() - began:.0f} s)",
        flush=True,
    )


def _new_backend_frames(hostile: Hostile) -> int:
    """The honest guest's frame counter on the backend now listening (0 until it is)."""
    try:
        with PlaneClient(hostile.host.planes_socket) as client:
            planes = client.list()
    except OSError:
        return 0
    return max((p.frame for p in planes if p.domid == hostile.honest.domid), default=0)


def vnc_greedy_clients(hostile: Hostile, scratch: Path) -> None:
    """GREEDY clients that each ask a 1080p connector for a full update and never read,
    against `pvdisplay vnc` with its default limit: its memory before, under and after,
    and an honest viewer's updates a second as a share of its quiet rate."""
    big = hostile.host.start_guest(
        guest("big", "connectors=big:1920x1080"), "pvdisplay.guests.demo:run"
    )
    wait_until(functools.partial(_flipped, hostile, big.domid), "the 1080p guest to flip")
    port = _free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "pvdisplay"), "--log-level", "error", "vnc",
         "--planes-socket", str(hostile.host.planes_socket), "--listen", f"127.0.0.1:{port}"],
    )  # fmt: skip
    greedy: list[socket.socket] = []
    try:
        # Connectors get ports in order of appearance: the honest guest's, the prober's,
        # then big's.
        big_port = port + 2
        wait_until(lambda: _listening(big_port), "the VNC server")
        watcher = Watcher(big_port)
        quiet = _updates_in(watcher, WINDOW)
        rss_quiet = _rss(process.pid)
        for _ in range(GREEDY):
            sock = socket.create_connection(("127.0.0.1", big_port), timeout=PATIENCE)
            sock.sendall(b"RFB 003.008\n\x01\x01" + update_request(False, 1920, 1080))
            greedy.append(sock)
        under = _updates_in(watcher, WINDOW)
        rss_under = _rss(process.pid)
        for sock in greedy:
            sock.close()
        time.sleep(WINDOW)
        rss_after = _rss(process.pid)
        watcher.close()
        crashes = int(process.poll() is not None)
    finally:
        for sock in greedy:
            sock.close()
        process.terminate()
        process.wait(PATIENCE)
        big.process.kill()
        hostile.host.wait_guest_destroyed(big.domid, PATIENCE)
    share = under / quiet if quiet else 0.0
    print(
        f"{f'vnc: {GREEDY} greedy clients of a 1080p connector':46} crashes {crashes}  hangs 0"
        f"  honest updates {share:6.1%} of quiet  (resident {rss_quiet} MiB quiet,"
        f" {rss_under} MiB under, {rss_after} MiB after)",
        flush=True,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _updates_in(watcher: Watcher, seconds: float) -> int:
    start = watcher.updates
    time.sleep(seconds)
    return watcher.updates - start


def _rss(pid: int) -> int:
    """Resident memory of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as scratch_name:
        scratch = Path(scratch_name)
        with world(scratch / "host", log=scratch / "host.log") as hostile:
            prober = hostile.host.start_guest(guest("prober"), "hostile_agents:raw_guest")
            Remote(prober.process.control)("connect", 1)
            for name, attack in ATTACKS:
                _print(name, _run(hostile, scratch, Remote(prober.process.control), attack))
            vnc_greedy_clients(hostile, scratch)
            backend_restarts(hostile)  # last: the observer's connection is to the old one
        vhost_user_shrink(scratch)
    print(f"hostile bench: {time.monotonic() - began:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
