"""A real arm64 Linux guest under QEMU (TCG) whose virtio-gpu is served over vhost-user.

tools/guest/fetch.sh unpacks QEMU 10, Debian's arm64 kernel, busybox and modetest under
.cache/guest; tools/guest/mkinitramfs.py builds an initramfs whose init (tools/guest/init)
draws a known pattern to /dev/fb0 (then takes commands typed on its console, such as a
mode change through modetest) or runs a redraw loop. Used by the guest test and by
bench/bench_virtio_gpu.py.
"""

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import numpy as np
import numpy.typing as npt
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "guest"
TOOLS = REPO / "tools" / "guest"
FETCHED = CACHE / "fetched.stamp"
BOOT_TIMEOUT = 90.0


@dataclass(frozen=True)
class GuestFiles:
    """Everything one boot needs, for a guest drawing a `width`x`height` pattern."""

    root: Path
    kernel: Path
    initrd: Path
    pattern: bytes
    width: int
    height: int

    @property
    def qemu(self) -> Path:
        return self.root / "usr/bin/qemu-system-aarch64"

    @property
    def c_backend(self) -> Path:
        """QEMU's own back-end, the reference to compare against."""
        return self.root / "usr/lib/qemu/vhost-user-gpu"

    def env(self) -> dict[str, str]:
        libs = [self.root / "usr/lib/x86_64-linux-gnu", self.root / "lib/x86_64-linux-gnu"]
        return {
            **os.environ,
            "LD_LIBRARY_PATH": ":".join(map(str, libs)),
            "QEMU_MODULE_DIR": str(self.root / "usr/lib/x86_64-linux-gnu/qemu"),
        }

    def expected_rgb(self) -> npt.NDArray[np.uint8]:
        """The pattern as the screen shows it: height x width x RGB."""
        xrgb = np.frombuffer(self.pattern, np.uint8).reshape(self.height, self.width, 4)
        return np.ascontiguousarray(xrgb[..., 2::-1])


def prepare(width: int, height: int) -> GuestFiles:
    """Fetch (once) and build (once per size and init script) the guest's files."""
    subprocess.run(["sh", str(TOOLS / "fetch.sh"), str(CACHE)], check=True)
    build = CACHE / f"build-{width}x{height}"
    initrd = build / "initrd.gz"
    sources = [TOOLS / "init", TOOLS / "mkinitramfs.py", FETCHED]
    if not initrd.exists() or initrd.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        subprocess.run(
            [
                sys.executable,
                str(TOOLS / "mkinitramfs.py"),
                str(CACHE / "root"),
                f"{width}x{height}",
                str(build),
            ],
            check=True,
        )
    root = CACHE / "root"
    release = (build / "release").read_text().strip()
    return GuestFiles(
        root,
        root / f"boot/vmlinuz-{release}",
        initrd,
        (build / "pattern.raw").read_bytes(),
        width,
        height,
    )


def wait_for_socket(path: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_socket():
        if process.poll() is not None:
            raise RuntimeError(f"back-end exited with {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no socket at {path}")
        time.sleep(0.02)


class Qemu:
    """One guest boot: `mode` "pattern" (draw and idle) or "bench" (redraw `frames` times)."""

    def __init__(
        self,
        files: GuestFiles,
        workdir: Path,
        vhost_socket: Path,
        *,
        mode: str = "pattern",
        frames: int = 0,
        outputs: int = 1,
        shared_memory: bool = True,
    ) -> None:
        self.files = files
        self.monitor_path = workdir / "monitor.sock"
        self.lines: queue.Queue[str] = queue.Queue()
        self.serial: list[str] = []
        append = f"console=ttyAMA0 panic=-1 quiet pvd.mode={mode} pvd.frames={frames}"
        command = [
            str(files.qemu),
            "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "512",
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-monitor", f"unix:{self.monitor_path},server,nowait",
            "-L", str(files.root / "usr/share/qemu"),
            "-kernel", str(files.kernel), "-initrd", str(files.initrd), "-append", append,
            "-global", "virtio-mmio.force-legacy=false",
            "-chardev", f"socket,id=vgpu,path={vhost_socket}",
            "-device", f"vhost-user-gpu,id=gpu,chardev=vgpu,max_outputs={outputs}",
        ]  # fmt: skip
        if shared_memory:
            command += [
                "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
                "-numa", "node,memdev=mem",
            ]  # fmt: skip
        self.stderr_path = workdir / "qemu.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=files.env(),
            )
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read_serial, args=(self.process.stdout,))
        self._reader.daemon = True
        self._reader.start()

    def _read_serial(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.serial.append(line)
            self.lines.put(line)

    def wait_for(self, prefix: str, timeout: float = BOOT_TIMEOUT) -> str:
        """The first serial line starting with `prefix` (or "PVD error"), else RuntimeError."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(self._story(f"no {prefix!r} on the serial console")) from None
            if line.startswith("PVD error"):
                raise RuntimeError(self._story(line))
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        """Type `line` on the guest's serial console (tools/guest/init reads commands there)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def _story(self, what: str) -> str:
        stderr = self.stderr_path.read_text(errors="replace")
        serial = "\n".join(self.serial[-20:])
        return f"{what}\n--- serial ---\n{serial}\n--- qemu stderr ---\n{stderr}"

    def monitor(self, command: str) -> str:
        """Run an HMP command; returns its output."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.monitor_path))
            self._until_prompt(sock)
            sock.sendall(command.encode() + b"\n")
            return self._until_prompt(sock)

    @staticmethod
    def _until_prompt(sock: socket.socket) -> str:
        data = b""
        while not data.endswith(b"(qemu) "):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", data.decode(errors="replace"))

    def screendump(self, path: Path, head: int = 0) -> npt.NDArray[np.uint8]:
        """What QEMU's display shows on console `head`, as height x width x RGB."""
        answer = self.monitor(f"screendump {path} gpu {head}")
        if not path.exists():
            raise RuntimeError(f"screendump of head {head} failed: {answer}")
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    def wait_exit(self, timeout: float = BOOT_TIMEOUT) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        assert self.process.stdin is not None
        self.process.stdin.close()
        self._reader.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
