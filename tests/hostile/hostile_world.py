"""The emulated host the hostile tests attack: xenstored, broker, backend and one honest
demo guest that flips at 60 Hz throughout, plus what the tests measure on it. A module,
not a conftest, so that each test module (and the bench) starts a host of its own."""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import rigs
from pvdisplay import toolstack
from pvdisplay.planes.client import PlaneClient
from pvdisplay.toolstack import vkb as vkb_config
from pvdisplay.toolstack.host import EmulatedHost, RunningGuest
from rigs import wait_until

DEMO_ENTRY = "pvdisplay.guests.demo:run"
HONEST_FLIPS = 20
"""Flips the honest guest must show while and after an attack (it makes 60 a second)."""


def guest(name: str, spec: str = "connectors=c0:64x48", vkb: bool = False) -> toolstack.Guest:
    """A guest with one vdispl (connector c0) and, with `vkb`, a keyboard bound to it."""
    device = toolstack.parse_xl_vdispl(spec, 0, name, {}, default_backend=0)
    keyboards = (vkb_config.parse_xl_vkb("unique-id=c0", 0, name, {}, 0),) if vkb else ()
    return toolstack.Guest(name, None, (device,), keyboards)


@dataclass
class Hostile:
    host: EmulatedHost
    honest: RunningGuest
    observer: PlaneClient
    """One planes connection held throughout, as an output holds its own: attacks on the
    planes socket then cannot hide the honest guest's flips."""

    def frames(self) -> int:
        """Frames the honest guest's connector has shown (the plane's flip counter)."""
        for plane in self.observer.list():
            if plane.domid == self.honest.domid:
                return plane.frame
        return -1

    def wait_flips(self, count: int = HONEST_FLIPS) -> None:
        """The honest guest flips `count` more times (counted, never timed)."""
        start = self.frames()
        wait_until(lambda: self.frames() >= start + count, f"{count} honest flips")

    def resources(self) -> dict[str, int]:
        """What the broker and the backend hold: tables, descriptors, the backend's usage."""
        stats = {f"broker {k}": v for k, v in self.host.hv.stats().items()}
        assert self.host.backend is not None
        backend = self.host.backend
        usage = {f"backend {k}": v for k, v in self.host.hv.usage(backend.domid).items()}
        fds = len(os.listdir(f"/proc/{backend.pid}/fd"))
        return stats | usage | {"backend fds": fds}

    def wait_resources(self, expected: dict[str, int]) -> None:
        """Every count back to `expected`; on a timeout the assertion shows the difference."""
        try:
            wait_until(lambda: self.resources() == expected, "resources to return")
        except TimeoutError:
            assert self.resources() == expected


@contextlib.contextmanager
def world(
    run_dir: Path, config: toolstack.HostConfig | None = None, log: Path | None = None
) -> Iterator[Hostile]:
    """A host (of `config`, whose guests are ignored) with its honest guest flipping; with
    `log`, every process the host starts now (xenstored, the broker, the backend, the
    honest guest) writes its log lines there."""
    config = config or toolstack.HostConfig(toolstack.BackendConfig("Domain-0", 0, False), ())
    with contextlib.ExitStack() as stack:
        with _stderr_to(log) if log is not None else contextlib.nullcontext():
            host = stack.enter_context(rigs.emulated_host(replace(config, guests=()), run_dir))
            honest = host.start_guest(guest("honest"), DEMO_ENTRY)
        observer = stack.enter_context(PlaneClient(host.planes_socket))
        running = Hostile(host, honest, observer)
        wait_until(lambda: running.frames() > 10, "the honest guest to flip")
        yield running


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Descriptor 2 is `path` for the processes started meanwhile (they inherit it)."""
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)
