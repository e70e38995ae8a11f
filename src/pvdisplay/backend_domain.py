"""A backend domain: the display and input backends, and the planes socket they publish to.

The same composition serves both hypervisors:

- on the emulated host, `run` is the domain entry point the host starts
  (`DomainLauncher.start_domain("pvdisplay.backend_domain:run", XENSTORE_DIR, PLANES_SOCKET, ...)`),
  and the host's control pipe stops it and asks for its status;
- on real Xen, `pvdisplay backend --hv xen` runs a `BackendDomain` over
  `pvdisplay.hv.xen` in dom0 until a signal.

A device kind of its own (vsnd, say) would be one more service started here.
"""

import asyncio
import logging
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Self

from pvdisplay import logs
from pvdisplay.display.limits import DEFAULT_DESCRIPTOR_BUDGET, DEFAULT_PAGE_BUDGET
from pvdisplay.display.service import BackendService
from pvdisplay.hv import Hypervisor
from pvdisplay.input.service import InputService
from pvdisplay.planes.model import PlaneRegistry
from pvdisplay.planes.server import MAX_CLIENTS, PlaneServer
from pvdisplay.store.aio import AsyncClient

log = logging.getLogger(__name__)

COPY_FLAG = "--copy"
PAGE_BUDGET_FLAG = "--page-budget="
DESCRIPTOR_BUDGET_FLAG = "--descriptor-budget="
PLANES_CLIENTS_FLAG = "--planes-clients="


@dataclass(frozen=True)
class Options:
    """Where XenStore and the planes socket are, and how the display backend presents."""

    xenstore_socket: str
    """What this domain's XenStore client connects to: a xenstored socket, or the
    xenbus device in a domain that has none (`pvdisplay.store.transport.xenstore_path`)."""
    planes_socket: str
    copy_frames: bool = False
    page_budget: int = DEFAULT_PAGE_BUDGET
    """Pages each frontend device may make the backend hold (`DisplayDevice.page_budget`)."""
    descriptor_budget: int = DEFAULT_DESCRIPTOR_BUDGET
    """Descriptors each frontend device may make the backend hold
    (`DisplayDevice.descriptor_budget`)."""
    planes_clients: int = MAX_CLIENTS
    """Local clients the planes socket serves at once (`PlaneServer`)."""


class BackendDomain:
    """The display and input backends of one domain, with the planes socket they feed."""

    def __init__(self, hv: Hypervisor, options: Options) -> None:
        self._hv = hv
        self._options = options
        self._planes = PlaneRegistry()
        self._xs: AsyncClient | None = None
        self._display: BackendService | None = None
        self._inputs: InputService | None = None
        self._server: PlaneServer | None = None

    async def start(self) -> None:
        """Connect to XenStore, listen on the planes socket and serve every device found."""
        xs = self._xs = await AsyncClient.connect(self._options.xenstore_socket)
        inputs = self._inputs = InputService(self._hv, xs, self._planes)
        self._server = PlaneServer(
            self._planes,
            self._options.planes_socket,
            inputs.deliver,
            max_clients=self._options.planes_clients,
        )
        self._server.start()
        self._display = BackendService(
            self._hv,
            xs,
            self._planes,
            self._options.copy_frames,
            inputs.on_port,
            page_budget=self._options.page_budget,
            descriptor_budget=self._options.descriptor_budget,
        )
        await self._display.start()
        await inputs.start()
        log.info(
            "backend domain serving",
            extra=logs.fields(
                domid=self._hv.domid,
                copy=self._options.copy_frames,
                planes=self._options.planes_socket,
            ),
        )

    async def stop(self) -> None:
        if self._inputs is not None:
            await self._inputs.stop()
        if self._display is not None:
            await self._display.stop()
        if self._server is not None:
            self._server.close()
        if self._xs is not None:
            await self._xs.close()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def status(self) -> list[dict[str, object]]:
        """The display backend's devices: state, and what each holds."""
        return self._display.status() if self._display is not None else []

    def input_status(self) -> list[dict[str, object]]:
        return self._inputs.status() if self._inputs is not None else []


def xenstore_socket(xenstore_dir: str, domid: int) -> str:
    """The socket a domain's XenStore client uses in a `pvdisplay xenstored` directory."""
    base = Path(xenstore_dir)
    return str(base / "socket" if domid == 0 else base / "domain" / str(domid))


def domain_args(
    xenstore_dir: str,
    planes_socket: str,
    copy_frames: bool,
    page_budget: int,
    *,
    descriptor_budget: int = DEFAULT_DESCRIPTOR_BUDGET,
    planes_clients: int = MAX_CLIENTS,
) -> list[str]:
    """The arguments `run` takes, for `DomainLauncher.start_domain`."""
    return [
        xenstore_dir,
        planes_socket,
        *([COPY_FLAG] if copy_frames else []),
        f"{PAGE_BUDGET_FLAG}{page_budget}",
        f"{DESCRIPTOR_BUDGET_FLAG}{descriptor_budget}",
        f"{PLANES_CLIENTS_FLAG}{planes_clients}",
    ]


def options_from_args(domid: int, args: tuple[str, ...]) -> Options:
    usage = (
        f"XENSTORE_DIR PLANES_SOCKET [{COPY_FLAG}] [{PAGE_BUDGET_FLAG}PAGES]"
        f" [{DESCRIPTOR_BUDGET_FLAG}DESCRIPTORS] [{PLANES_CLIENTS_FLAG}CLIENTS]"
    )
    if len(args) < 2:
        raise ValueError(f"usage: {usage}")
    budgets = {
        PAGE_BUDGET_FLAG: DEFAULT_PAGE_BUDGET,
        DESCRIPTOR_BUDGET_FLAG: DEFAULT_DESCRIPTOR_BUDGET,
        PLANES_CLIENTS_FLAG: MAX_CLIENTS,
    }
    for flag in args[2:]:
        name = next((name for name in budgets if flag.startswith(name)), None)
        if name is not None:
            value = flag.removeprefix(name)
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
                raise ValueError(f"{flag}: a budget is a whole number, at least 1")
            budgets[name] = int(value)
        elif flag != COPY_FLAG:
            raise ValueError(f"unknown backend flag {flag!r}; usage: {usage}")
    return Options(
        xenstore_socket(args[0], domid),
        args[1],
        COPY_FLAG in args[2:],
        budgets[PAGE_BUDGET_FLAG],
        budgets[DESCRIPTOR_BUDGET_FLAG],
        budgets[PLANES_CLIENTS_FLAG],
    )


def run(hv: Hypervisor, control: Connection, *args: str) -> None:
    """Emulated-host domain entry point: serve until the host closes `control` or sends
    "stop"; "status" and "input-status" are answered on it."""
    asyncio.run(_controlled(hv, control, options_from_args(hv.domid, args)))


async def _controlled(hv: Hypervisor, control: Connection, options: Options) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    domain = BackendDomain(hv, options)

    def on_control() -> None:
        try:
            message = control.recv()
        except (EOFError, OSError):
            stop.set()
            return
        if message == "stop":
            stop.set()
        elif message == "status":
            control.send(domain.status())
        elif message == "input-status":
            control.send(domain.input_status())

    loop.add_reader(control.fileno(), on_control)
    try:
        await domain.start()
        await stop.wait()
    finally:
        loop.remove_reader(control.fileno())
        await domain.stop()
