"""Shared fixtures: C programs compiled against the real Xen and Linux headers, and C peers."""

import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# CI must not turn red by luck: there every property test draws the same examples on
# every run (derandomized, no example database), and a slow example on a loaded machine
# is not a failure. Locally, Hypothesis searches afresh and remembers what failed.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("CI"):
    settings.load_profile("ci")

# A shell starts a background job (`make test &`, CI) with Ctrl-C ignored, and commands
# the suite starts inherit that: the tests that press Ctrl-C would wait for nothing.
# A handler, unlike an ignore, is reset to the default in a started program, so every
# command starts as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
                [
                    "gcc",
                    "-O2",
                    "-Wall",
                    "-Werror",
                    "-std=gnu11",
                    *flags,
                    "-o",
                    str(binary),
                    str(C_DIR / f"{name}.c"),
                ],
                check=True,
            )
            built[key] = binary
        return built[key]

    return build


@pytest.fixture
def check_linux_input_codes(tmp_path: Path) -> Callable[[Iterable[tuple[str, int, str]]], None]:
    """Assert, by compiling with gcc, that each (name, value, label) holds in
    <linux/input-event-codes.h>; the failure message names the labels that do not."""

    def check(codes: Iterable[tuple[str, int, str]]) -> None:
        checks = [f'_Static_assert({name} == {value}, "{label}");' for name, value, label in codes]
        source = tmp_path / "input_codes.c"
        source.write_text("#include <linux/input-event-codes.h>\n" + "\n".join(checks) + "\n")
        result = subprocess.run(
            ["gcc", "-fsyntax-only", "-Wall", "-Werror", str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    return check


@pytest.fixture(scope="module")
def start_c_peer() -> Iterator[Callable[[Path], Callable[[str], str]]]:
    """Start a long-running C program; ask it one line at a time, read one line back.

    One process answers every example of a hypothesis test, so examples cost a
    pipe round trip, not a process start. Peers are closed when the module's
    tests are done and must then exit 0.
    """
    peers: list[subprocess.Popen[str]] = []

    def start(binary: Path) -> Callable[[str], str]:
        proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        peers.append(proc)
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def ask(line: str) -> str:
            stdin.write(line + "\n")
            stdin.flush()
            return stdout.readline().strip()

        return ask

    yield start
    for proc in peers:
        assert proc.stdin is not None
        proc.stdin.close()
    assert [proc.wait() for proc in peers] == [0] * len(peers)
