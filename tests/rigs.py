"""Real-process rigs for the end-to-end tests and benchmarks.

`backend_world(world_type)` runs xenstored, the hypervisor broker and a display
backend (domain 0) in a fresh directory; `Rig.start_guest` writes a guest's XenStore
home, one-connector vdispl and vkb as xl does, then starts the guest's domain, which
answers commands through `Guest` (the agent side is `guest_commands.serve`).
`emulated_host` starts an `EmulatedHost` without its guests. Failures raise plain
exceptions, so benchmarks use the rigs too.
"""

import contextlib
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pvdisplay import toolstack
from pvdisplay.hv.local.launcher import DomainLauncher, DomainProcess
from pvdisplay.planes.model import PlaneKey
from pvdisplay.store.client import Client
from pvdisplay.toolstack import vkb as config
from pvdisplay.toolstack.host import EmulatedHost, apply_plan

BACKEND = 0
PATIENCE = 60.0  # hang protection only: nothing asserts how fast anything happens
DISPLAY_SERVICE = "pvdisplay.backend_domain:run"

# Debian's Chromium, headless, with nothing that reaches out to the network on its own.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


@dataclass
class Guest:
    """A guest domain whose agent answers commands with `guest_commands.serve`."""

    process: DomainProcess

    @property
    def domid(self) -> int:
        return self.process.domid

    @property
    def key(self) -> PlaneKey:
        """Connector 0 of vdispl 0."""
        return PlaneKey(self.domid, 0, 0)

    def wait_ready(self) -> None:
        reply = self._reply()
        if reply != ("ready", None):
            raise RuntimeError(f"domain {self.domid} did not start: {reply!r}")

    def __call__(self, *command: Any) -> Any:
        self.process.control.send(command)
        status, value = self._reply()
        if status != "ok":
            raise RuntimeError(f"domain {self.domid} answered {command!r} with {value}")
        return value

    def read_until(self, last: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """kbdif events the guest received, up to and including `last`."""
        events: list[tuple[Any, ...]] = []
        while last not in events:
            events += [tuple(event) for event in self("read", 1)]
        return events

    def _reply(self) -> Any:
        if not self.process.control.poll(PATIENCE):
            raise TimeoutError(f"domain {self.domid} sent nothing (exit {self.process.returncode})")
        return self.process.control.recv()


@dataclass
class Rig:
    """A running xenstored, broker (`host`) and display backend domain."""

    host: DomainLauncher
    xs: Client
    xenstore_dir: str
    planes_socket: str
    backend: DomainProcess
    domids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def start_guest(
        self, entry: str, *args: str, vkb: str, resolution: str, domid: int | None = None
    ) -> Guest:
        """Write the guest's domain, vdispl and vkb as xl does; run `entry` and wait for it.

        The domain runs `entry(hv, control, xenstore_dir, *args)`; its connector and vkb
        share the unique-id "dom<domid>".
        """
        domid = next(self.domids) if domid is None else domid
        self.xs.introduce(domid, 0, 1)
        unique_id = f"dom{domid}"
        width, height = (int(part) for part in resolution.split("x"))
        vdispl = toolstack.Vdispl(
            0, BACKEND, False, (toolstack.Connector(unique_id, width, height),)
        )
        device = config.parse_xl_vkb(f"{vkb},unique-id={unique_id}", 0, "vkb", {}, BACKEND)
        for plan in (
            toolstack.domain_nodes(domid, f"guest{domid}"),
            toolstack.vdispl_nodes(domid, vdispl),
            config.vkb_nodes(domid, device, [vdispl]),
        ):
            apply_plan(self.xs, plan)
        guest = Guest(self.host.start_domain(entry, self.xenstore_dir, *args, domid=domid))
        guest.wait_ready()
        return guest


World = TypeVar("World", bound=Rig)


@contextlib.contextmanager
def backend_world(world_type: type[World], backend_entry: str = DISPLAY_SERVICE) -> Iterator[World]:
    """A `Rig` (of `world_type`) whose backend domain runs `backend_entry`.

    The backend runs `backend_entry(hv, control, xenstore_dir, planes_socket)`; the rig is
    handed over once the backend listens on its planes socket.
    """
    workdir = tempfile.mkdtemp(prefix="pvd-rig-", dir="/tmp")
    xenstore_dir = f"{workdir}/xs"
    planes_socket = f"{workdir}/planes"
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pvdisplay.cli import main; main()",
            *("--log-level", "warning", "xenstored", "--socket-dir", xenstore_dir),
        ]
    )

    def listening(socket: str) -> bool:
        if daemon.poll() is not None:
            raise RuntimeError(f"xenstored exited with status {daemon.returncode}")
        return Path(socket).exists()

    try:
        wait_until(lambda: listening(f"{xenstore_dir}/socket"), "xenstored")
        with Client(f"{xenstore_dir}/socket") as xs:

            def release(domid: int) -> None:
                if domid != BACKEND:
                    xs.release(domid)

            with DomainLauncher(on_domain_released=release) as host:
                backend = host.start_domain(
                    backend_entry, xenstore_dir, planes_socket, domid=BACKEND
                )
                wait_until(lambda: listening(planes_socket), "the backend's planes socket")
                yield world_type(host, xs, xenstore_dir, planes_socket, backend)
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def emulated_host(config_: toolstack.HostConfig, run_dir: Path) -> Iterator[EmulatedHost]:
    """An `EmulatedHost` with its backend listening and none of its guests started."""
    emulated = EmulatedHost(config_, run_dir, log_level="warning")
    try:
        emulated.start(guests=False)
        wait_until(emulated.planes_socket.exists, "the planes socket")
        yield emulated
    finally:
        emulated.stop()
