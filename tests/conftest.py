"""Shared fixtures: C programs compiled against the real Xen headers."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

C_DIR = Path(__file__).parent / "c"
XEN_INCLUDE = Path("/usr/include/xen/io")


@pytest.fixture(scope="session")
def compile_c(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Compile `tests/c/<name>.c` with gcc once per session and return the binary.

    Extra arguments go to gcc (for example `-DPAD=1` to plant a deliberate error).
    """
    if not XEN_INCLUDE.is_dir():
        pytest.fail("Xen headers missing: run `make test`, which installs libxen-dev")
    out_dir = tmp_path_factory.mktemp("cbin")
    built: dict[tuple[str, tuple[str, ...]], Path] = {}

    def build(name: str, *flags: str) -> Path:
        key = (name, flags)
        if key not in built:
            binary = out_dir / f"{name}{len(built)}"
            subprocess.run(
                ["gcc", "-O2", "-Wall", "-Werror", "-std=gnu11", *flags,
                 "-o", str(binary), str(C_DIR / f"{name}.c")],
                check=True,
            )
            built[key] = binary
        return built[key]

    return build
