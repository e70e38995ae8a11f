"""Stage the Python runtime a domU needs to run pvdisplay's own frontends, from dom0's root.

    python3 tools/xen/python_domu.py DOM0_ROOT STAGE

Copies dom0's python3.11 with its standard library and numpy (what `pvdisplay.display.front`
and `pvdisplay.input.front` import), libatomic (the ring indices load it through ctypes),
and every shared library these load, found by following each ELF file's NEEDED entries
through the root's library directories. Symbolic links are resolved inside DOM0_ROOT, not
on this machine: Debian points libblas.so.3 at /etc/alternatives. The result is laid out
as in dom0 (/usr/bin/python3, /usr/lib/python3.11, /usr/lib/python3/dist-packages), with
every library in /lib/x86_64-linux-gnu, where the domU's loader looks by default.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
# What nothing in a headless frontend imports, left out at any depth: tests, tools, and the
# extension modules that would bring in OpenSSL, Kerberos, SQLite or curses.
LEFT_OUT = frozenset({
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
    "distutils", "f2py", "config-3.11-x86_64-linux-gnu",
})  # fmt: skip
EXTENSIONS_LEFT_OUT = (
    "_ssl.", "_hashlib.", "_sqlite3.", "_dbm.", "nis.", "_curses", "readline.", "_test",
    "_xxtestfuzz.", "xxlimited", "_ctypes_test.", "ossaudiodev.", "audioop.", "_crypt.",
)  # fmt: skip
EXTRA_LIBRARIES = ("libatomic.so.1",)


def resolve(root: Path, path: str) -> Path:
    """`path` (absolute inside `root`) with every symbolic link followed inside `root`."""
    current = root
    parts = [part for part in path.split("/") if part]
    hops = 0
    while parts:
        candidate = current / parts.pop(0)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise RuntimeError(f"{path}: too many symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [part for part in target.split("/") if part] + parts
            continue
        current = candidate
    return current


def needed(elf: Path) -> list[str]:
    dump = subprocess.run(["objdump", "-p", str(elf)], check=True, capture_output=True, text=True)
    return [line.split()[1] for line in dump.stdout.splitlines() if line.split()[:1] == ["NEEDED"]]


def find_library(root: Path, name: str) -> Path:
    for directory in LIBRARY_DIRS:
        found = resolve(root, f"/{directory}/{name}")
        if found.is_file():
            return found
    raise SystemExit(f"python_domu.py: no {name} in {root}")


def copy_tree(root: Path, source: Path, target: Path) -> list[Path]:
    """Copy `source` (a directory in `root`) to `target`, links resolved inside `root`,
    without what LEFT_OUT and EXTENSIONS_LEFT_OUT name; returns the shared objects copied."""
    objects = []
    for entry in sorted(source.iterdir()):
        if entry.name in LEFT_OUT or entry.name.startswith(EXTENSIONS_LEFT_OUT):
            continue
        real = resolve(root, "/" + str(entry.relative_to(root)))
        if real.is_dir():
            objects += copy_tree(root, real, target / entry.name)
            continue
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, target / entry.name)
        if entry.name.endswith(".so") or ".so." in entry.name:
            objects.append(target / entry.name)
    return objects


def main() -> None:
    root, stage = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    (stage / "usr/bin").mkdir(parents=True)
    python = stage / "usr/bin/python3.11"
    shutil.copy2(resolve(root, "/usr/bin/python3.11"), python)
    (stage / "usr/bin/python3").symlink_to("python3.11")
    objects = [python]
    objects += copy_tree(root, root / "usr/lib/python3.11", stage / "usr/lib/python3.11")
    numpy = root / "usr/lib/python3/dist-packages/numpy"
    objects += copy_tree(root, numpy, stage / "usr/lib/python3/dist-packages/numpy")
    libraries = stage / "lib/x86_64-linux-gnu"
    libraries.mkdir(parents=True)
    wanted = [*EXTRA_LIBRARIES]
    copied: set[str] = set()
    for elf in objects:
        wanted += needed(elf)
    while wanted:
        name = wanted.pop()
        if name in copied:
            continue
        copied.add(name)
        shutil.copy2(find_library(root, name), libraries / name)
        wanted += needed(libraries / name)
    (stage / "lib64").mkdir()
    shutil.copy2(resolve(root, "/lib64/ld-linux-x86-64.so.2"), stage / "lib64/ld-linux-x86-64.so.2")
    print(f"python_domu.py: python3.11, numpy and {len(copied)} libraries staged in {stage}")


if __name__ == "__main__":
    main()
