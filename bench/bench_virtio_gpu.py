"""virtio-gpu over vhost-user: our back-end against QEMU's C vhost-user-gpu, same guest.

The arm64 test guest (tests/guest_vm.py, QEMU 10 TCG over virtio-mmio) redraws its whole
1280x800 XRGB8888 framebuffer FRAMES times, alternating two pictures; each write is
fsync'ed, so the guest's fbdev waits for the device's TRANSFER_TO_HOST_2D +
RESOURCE_FLUSH round trip. Figures per back-end, each the median of RUNS boots:
- guest-visible frames per second (timed by the guest, /proc/uptime);
- back-end CPU per frame (user + system time of the back-end process during the loop);
and the ratio ours / QEMU's. Both back-ends also send every frame to QEMU's display over
the vhost-user-gpu socket. TCG makes the guest itself slow: its copy into the fbdev
buffer is part of each frame for both back-ends alike.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import guest_vm
from bench.cpu import cpu_seconds

WIDTH, HEIGHT = 1280, 800
FRAMES = 60
RUNS = 3


def one_run(
    files: guest_vm.GuestFiles, command: list[str], env: dict[str, str]
) -> tuple[float, float]:
    """(frames per second, back-end CPU seconds per frame) of one boot."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        vhost = workdir / "vgpu.sock"
        backend = subprocess.Popen([*command, "--socket-path", str(vhost)], env=env)
        try:
            guest_vm.wait_for_socket(vhost, backend)
            with guest_vm.Qemu(files, workdir, vhost, mode="bench", frames=FRAMES) as guest:
                guest.wait_for("PVD fb")
                cpu_start = cpu_seconds(backend.pid)
                line = guest.wait_for("PVD bench")
                cpu_end = cpu_seconds(backend.pid)
                guest.wait_exit()
        finally:
            if backend.poll() is None:
                backend.terminate()
            backend.wait(30)
    fields = dict(item.split("=") for item in line.split()[2:])
    frames = int(fields["frames"])
    seconds = float(fields["end"]) - float(fields["start"])
    return frames / seconds, (cpu_end - cpu_start) / frames


def measure(
    files: guest_vm.GuestFiles, command: list[str], env: dict[str, str]
) -> tuple[float, float]:
    runs = [one_run(files, command, env) for _ in range(RUNS)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    if not guest_vm.FETCHED.exists():
        print("skipped: guest files missing (run `make guest-files`)")
        return
    files = guest_vm.prepare(WIDTH, HEIGHT)
    pvdisplay = str(Path(sys.executable).parent / "pvdisplay")
    started = time.monotonic()
    qemu_fps, qemu_cpu = measure(files, [str(files.c_backend)], files.env())
    ours_fps, ours_cpu = measure(
        files, [pvdisplay, "--log-level", "warning", "vhost-user-gpu"], dict(os.environ)
    )
    print(f"guest redraws {WIDTH}x{HEIGHT} XRGB8888, {FRAMES} frames, median of {RUNS} boots")
    print(
        f"  QEMU vhost-user-gpu (C): {qemu_fps:6.1f} frames/s  {qemu_cpu * 1e3:6.2f} ms CPU/frame"
    )
    print(
        f"  pvdisplay vhost-user-gpu: {ours_fps:6.1f} frames/s  {ours_cpu * 1e3:6.2f} ms CPU/frame"
    )
    print(
        f"  ratio ours/QEMU: frame rate {ours_fps / qemu_fps:.2f}x, "
        f"CPU per frame {ours_cpu / qemu_cpu:.2f}x  ({time.monotonic() - started:.0f} s)"
    )
