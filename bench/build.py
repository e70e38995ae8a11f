"""Compiling the C baselines the benchmarks measure beside pvdisplay."""

import subprocess
from pathlib import Path


def build_c(source: Path, directory: str | Path) -> Path:
    """Compile `source` (warnings are errors) into `directory`; the executable's path."""
    binary = Path(directory) / source.stem
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-std=gnu11", "-o", str(binary), str(source)],
        check=True,
    )
    return binary
