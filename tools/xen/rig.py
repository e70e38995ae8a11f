#!/usr/bin/env python3
"""Real Xen under QEMU (TCG, no KVM needed): build the images and boot them.

Xen 4.17 boots a PV dom0 (Debian's 6.1 kernel, an initramfs root with the Xen toolstack,
python3 and pvdisplay's source from this working tree); dom0's /init (tools/xen/dom0/init)
brings up the toolstack, starts `pvdisplay backend --hv xen`, runs the scenario scripts
named on its command line (tools/xen/scenarios/*.sh: each `xl create`s PV guests whose
/init runs tools/xen/guest/scenarios/*) and powers off. Everything crosses to the host on
the serial console: this module timestamps it into a log and reads markers from it.

    python3 tools/xen/rig.py boot [--scenarios fe-alloc:be-alloc] [--log FILE] [--stay]
    python3 tools/xen/rig.py demo     # one guest flipping; the web viewer on a host port

Standard library only (the tests import it from the venv, `make demo-xen` runs it with
any python3).
"""

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".cache" / "xen"
ALL_SCENARIOS = ("fe-alloc", "be-alloc", "two-connectors", "python-front", "restart")
# Xen: its console on the first serial port, with a transmit buffer large enough that the
# base64 snapshots dom0 writes do not overrun it (Xen drops what does not fit).
XEN_ARGS = (
    "dom0_mem=1536M,max:1536M dom0_max_vcpus=2 console=com1 com1=115200,8n1 "
    "serial_tx_buffer=1M loglvl=warning guest_loglvl=warning noreboot console_timestamps=boot"
)
# rootfstype=ramfs: the initramfs root is otherwise a tmpfs limited to half of dom0's memory,
# too small for python3, numpy and the rest (the kernel says "Initramfs unpacking failed").
DOM0_ARGS = "console=hvc0 earlyprintk=xen rdinit=/init rootfstype=ramfs quiet"
# Lines after which nothing useful follows: stop waiting at once.
FATAL = re.compile(r"Kernel panic|Dom0 crashed|\(XEN\) Panic on CPU|Initramfs unpacking failed")
WEB_PORT = 8080  # where dom0's web viewer listens
# Not "max": with QEMU 10's TCG "max" CPU, processes in dom0 and in the guests crash at
# random (Python segfaults in pure-Python code, modetest too) and copies land with 16-
# and 32-byte chunks of foreign data in them, the width of SSE and AVX registers: vector
# state does not survive Xen PV context switches intact. Nehalem (SSE4.2, no AVX, no
# XSAVE) ran clean in the same stress (tools/xen/scenarios/stress-snap.sh).
CPU = os.environ.get("XEN_RIG_CPU", "Nehalem")
ACCEL = os.environ.get("XEN_RIG_ACCEL", "tcg")
XEN_EXTRA = os.environ.get("XEN_RIG_XEN_ARGS", "")


class RigUnavailableError(RuntimeError):
    """The images could not be fetched (no network, no mirror, no apt): nothing to boot."""


def prepare(cache: Path = CACHE) -> Path:
    """Fetch (once) and pack (every time, seconds) the images; return the cache directory."""
    missing = [
        tool for tool in ("mmdebstrap", "cpio", "apt-get", "objdump") if not shutil.which(tool)
    ]
    if missing:
        raise RigUnavailableError(
            f"missing tools: {' '.join(missing)} (`make xen-tools` installs them)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time (other test runs share the cache)
        fetched = subprocess.run(
            ["sh", str(HERE / "fetch.sh"), str(cache)], capture_output=True, text=True, check=False
        )
        if fetched.returncode != 0:
            raise RigUnavailableError(
                f"tools/xen/fetch.sh failed:\n{fetched.stdout[-3000:]}{fetched.stderr[-3000:]}"
            )
        subprocess.run(["sh", str(HERE / "pack.sh"), str(cache)], check=True)
    return cache


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Line:
    """One console line and when it arrived (seconds since QEMU started)."""

    time: float
    text: str


class Boot:
    """One QEMU run of Xen, dom0 and its guests; the console is timestamped into `log`."""

    def __init__(
        self,
        cache: Path,
        log: Path,
        scenarios: tuple[str, ...],
        *,
        web_port: int | None = None,
        stay: bool = False,
        extra: str = "",
    ) -> None:
        self.log_path = log
        self.web_port = web_port if web_port is not None else free_port()
        self.lines: list[Line] = []
        self._cond = threading.Condition()
        self._done = False
        qemu = cache / "qemu"
        dom0_args = f"{DOM0_ARGS} xt.scenarios={':'.join(scenarios) or 'none'} {extra}"
        if stay:
            dom0_args += " xt.stay=1"
        command = [
            str(qemu / "usr/bin/qemu-system-x86_64"),
            "-L", str(qemu / "usr/share/qemu"), "-L", str(qemu / "usr/share/seabios"),
            "-machine", "pc", "-accel", ACCEL, "-cpu", CPU, "-m", "3G", "-smp", "2",
            "-display", "none", "-vga", "none", "-monitor", "none", "-serial", "stdio",
            "-no-reboot",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.web_port}-10.0.2.15:{WEB_PORT}",
            "-device", "e1000,netdev=n0,romfile=",
            "-kernel", str(cache / "xen"), "-append", f"{XEN_ARGS} {XEN_EXTRA}",
            "-initrd", f"{cache / 'vmlinuz'} {dom0_args},{cache / 'out/dom0.cpio'}",
        ]  # fmt: skip
        if shutil.which("setpriv"):  # QEMU dies with us: a killed test run leaves none behind
            command[:0] = ["setpriv", "--pdeathsig", "TERM", "--"]
        libs = [qemu / "usr/lib/x86_64-linux-gnu", qemu / "lib/x86_64-linux-gnu"]
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": ":".join(map(str, libs)),
            "QEMU_MODULE_DIR": str(qemu / "usr/lib/x86_64-linux-gnu/qemu"),
        }
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("w", encoding="utf-8")
        self._log.write(" ".join(command) + "\n")
        self.start = time.monotonic()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            text = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            line = Line(time.monotonic() - self.start, text)
            self._log.write(f"[{line.time:8.2f}] {text}\n")
            self._log.flush()
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """The first line from index `start` on matching `pattern` (regex), waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                for line in self.lines[index:]:
                    found = regex.search(line.text)
                    if found:
                        return found
                    if FATAL.search(line.text):
                        raise TimeoutError(f"no line matching /{pattern}/: {line.text}")
                index = len(self.lines)
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    why = "QEMU exited" if self._done else f"{timeout:.0f} s passed"
                    raise TimeoutError(f"no line matching /{pattern}/: {why}; see {self.log_path}")
                self._cond.wait(min(left, 1.0))

    def wait_exit(self, timeout: float | None) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout)
        return None

    def forward_fifo(self, path: Path) -> None:
        """Whatever is written to the FIFO at `path` goes to the serial console, as typed
        (for debugging: three Ctrl-A switch the console to Xen, whose debug keys then
        answer, e.g. `printf '\\1\\1\\1q' > boot.log.in` dumps every domain)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.mkfifo(path)

        def forward() -> None:
            assert self.process.stdin is not None
            while self.process.poll() is None:
                with path.open("rb") as fifo:
                    for chunk in iter(lambda: fifo.read1(4096), b""):
                        self.process.stdin.write(chunk)
                        self.process.stdin.flush()

        threading.Thread(target=forward, daemon=True).start()

    def send(self, text: str) -> None:
        """Type `text` and a newline on the serial console (dom0 reads it on hvc0)."""
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# Reading a finished log.

_STAMP = re.compile(r"^\[\s*[\d.]+\] ")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+=*")


def console_lines(log: Path) -> list[str]:
    """The log's console lines without their timestamps."""
    return [_STAMP.sub("", line) for line in log.read_text(encoding="utf-8").splitlines()]


def dumped_files(lines: list[str]) -> dict[str, bytes]:
    """Files dom0 dumped (`dump_file`), by label, each checked against its sha256 and size."""
    files: dict[str, bytes] = {}
    begin = re.compile(r"@@DOM0 file-begin (\S+) ([0-9a-f]{64}) (\d+)$")
    label: str | None = None
    chunks: list[str] = []
    digest, size = "", 0
    for line in lines:
        if label is None:
            found = begin.search(line)
            if found:
                label, digest, size = found[1], found[2], int(found[3])
                chunks = []
        elif line.endswith(f"@@DOM0 file-end {label}"):
            data = base64.b64decode("".join(chunks))
            if len(data) == size and hashlib.sha256(data).hexdigest() == digest:
                files[label] = data
            label = None
        elif _BASE64.fullmatch(line.strip()):
            chunks.append(line.strip())  # other lines (a guest's console) may come between
    return files


def scenario_lines(lines: list[str], name: str) -> list[str]:
    """The console lines between scenario `name`'s start and end markers."""
    out: list[str] = []
    inside = False
    for line in lines:
        if f"@@DOM0 scenario {name} start" in line:
            inside = True
        elif f"@@DOM0 scenario {name} end" in line:
            out.append(line)
            break
        if inside:
            out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["prepare", "boot", "demo"])
    parser.add_argument("--scenarios", default=":".join(ALL_SCENARIOS))
    parser.add_argument("--log", type=Path, default=CACHE / "boot.log")
    parser.add_argument("--port", type=int, default=0, help="host port for the web viewer")
    parser.add_argument("--stay", action="store_true", help="keep dom0 up with a shell")
    parser.add_argument("--extra", default="", help="more dom0 kernel parameters (xt.*)")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    started = time.monotonic()
    try:
        cache = prepare()
    except RigUnavailableError as error:
        sys.exit(str(error))
    print(f"images ready in {time.monotonic() - started:.1f} s; console log: {args.log}")
    if args.command == "prepare":
        return
    demo = args.command == "demo"
    scenarios = ("demo",) if demo else tuple(s for s in args.scenarios.split(":") if s)
    with Boot(cache, args.log, scenarios, web_port=args.port or None, stay=args.stay or demo,
              extra=args.extra) as boot:  # fmt: skip
        boot.forward_fifo(args.log.with_name(args.log.name + ".in"))
        try:
            if demo:
                boot.wait_for(r"@@DOM0 demo ready", args.timeout)
                print(f"web viewer of dom0: http://127.0.0.1:{boot.web_port}/  (Ctrl-C stops)")
                boot.wait_exit(None)
            else:
                boot.wait_for(r"@@DOM0 all-done", args.timeout)
                if not args.stay:
                    boot.wait_exit(30)
        except KeyboardInterrupt:
            pass
        except TimeoutError as error:
            print(error, file=sys.stderr)
    lines = console_lines(args.log)
    print(f"boot took {time.monotonic() - started:.1f} s")
    for line in lines:
        if "@@DOM0" in line and "file-" not in line and "xs: " not in line:
            print(line)


if __name__ == "__main__":
    main()
