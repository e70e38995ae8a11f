#!/usr/bin/env python3
"""Build the test guest's initramfs: busybox, the virtio-gpu module stack, modetest with the
arm64 loader and libraries it links, tools/guest/init.

Usage: mkinitramfs.py ROOT WIDTHxHEIGHT OUTDIR

ROOT is the tree tools/guest/fetch.sh unpacked. OUTDIR receives initrd.gz, the kernel release
in `release`, and pattern.raw, the exact bytes the guest writes to /dev/fb0 (XRGB8888,
little-endian, stride = 4 * width) so the host can check the screen pixel for pixel.
Standard library only: the archive is written in the kernel's "newc" cpio format directly.
"""

import gzip
import io
import shutil
import stat
import sys
from pathlib import Path

# In load order: each module after everything it depends on.
MODULES = (
    "virtio_mmio",
    "drm",
    "drm_kms_helper",
    "drm_shmem_helper",
    "virtio_dma_buf",
    "virtio-gpu",
)
# modetest, linked against these (tools/guest/fetch.sh copies them out of their packages).
LOADER = "ld-linux-aarch64.so.1"
LIBRARIES = (LOADER, "libc.so.6", "libdrm.so.2")


def pattern(width: int, height: int) -> bytes:
    """Blue = x ^ y, green = y, red = x (low bytes): a shifted row or column shows."""
    out = bytearray(width * height * 4)
    xs = range(width)
    for y in range(height):
        row = bytearray(width * 4)
        row[0::4] = bytes((x ^ y) & 0xFF for x in xs)
        row[1::4] = bytes([y & 0xFF]) * width
        row[2::4] = bytes(x & 0xFF for x in xs)
        out[y * width * 4 : (y + 1) * width * 4] = row
    return bytes(out)


class Newc:
    """A cpio archive in the "newc" format the kernel unpacks into its rootfs."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.inode = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self.inode += 1
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self.out.write(data)
        self._pad()

    def _pad(self) -> None:
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def main(root: Path, size: str, outdir: Path) -> None:
    width, height = (int(v) for v in size.split("x"))
    (release,) = [p.name for p in (root / "lib/modules").iterdir()]
    modules = {p.name.split(".ko")[0]: p for p in (root / "lib/modules" / release).rglob("*.ko*")}
    picture = pattern(width, height)
    inverse = bytes(b ^ 0xFF for b in picture)

    archive = Newc()
    for directory in ("bin", "dev", "proc", "sys", "modules", "lib", "lib/aarch64-linux-gnu"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", (root / "bin/busybox").read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file("bin/modetest", (root / "usr/bin/modetest").read_bytes(), 0o755)
    # Debian's loader searches lib/aarch64-linux-gnu without an ld.so.cache.
    for library in LIBRARIES:
        data = (root / "usr/lib/aarch64-linux-gnu" / library).read_bytes()
        archive.file(f"lib/aarch64-linux-gnu/{library}", data, 0o755)
    archive.symlink(f"lib/{LOADER}", f"aarch64-linux-gnu/{LOADER}")
    for name in MODULES:
        module = modules[name]
        if module.suffix != ".ko":
            raise SystemExit(f"{module}: compressed modules are not supported")
        archive.file(f"modules/{name}.ko", module.read_bytes())
    archive.file("modules.order", "\n".join(MODULES).encode() + b"\n")
    archive.file("init", (Path(__file__).parent / "init").read_bytes(), 0o755)
    archive.file("pattern.raw", picture)
    archive.file("inverse.raw", inverse)

    outdir.mkdir(parents=True, exist_ok=True)
    with gzip.open(outdir / "initrd.gz.tmp", "wb", compresslevel=1) as f:
        f.write(archive.finish())
    (outdir / "pattern.raw").write_bytes(picture)
    (outdir / "release").write_text(release + "\n")
    shutil.move(outdir / "initrd.gz.tmp", outdir / "initrd.gz")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
