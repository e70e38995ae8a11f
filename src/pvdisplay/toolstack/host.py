"""The emulated host: xenstored, the hypervisor broker, the display backend and the guests.

`EmulatedHost` plays the parts of a Xen machine's dom0 toolstack (xl/libxl):

1. starts `pvdisplay xenstored` as a process and the `hv.local` broker;
2. writes dom0's nodes and starts the display backend as domain 0
   (`pvdisplay.backend_domain:run`);
3. for each guest: INTRODUCEs the domain, writes its home, its vdispl devices and its
   vkb devices as libxl does (`toolstack`, `toolstack.vkb`), and starts its process;
4. when a guest dies: RELEASEs it (so `@releaseDomain` fires), waits for the backend
   to let go of its devices, then removes its nodes as libxl's domain destroy does;
   when the backend dies, starts it again (frontends reconnect, guests keep running).
"""

import contextlib
import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import FrameType
from typing import Final, Self

from pvdisplay import backend_domain, logs, toolstack, xenbus
from pvdisplay.hv import HypervisorError
from pvdisplay.hv.local.launcher import DomainLauncher, DomainProcess
from pvdisplay.outputs.listen import bind_failure, format_address
from pvdisplay.outputs.web.server import BackgroundViewer
from pvdisplay.run_dir import (
    LOG_NAME,
    RunDirBusyError,
    RunDirLock,
    RunDirUnusableError,
    default_run_dir,
)
from pvdisplay.store.client import Client, Transaction
from pvdisplay.store.tree import Quotas
from pvdisplay.toolstack import vkb as vkb_config

log = logging.getLogger(__name__)

BACKEND_ENTRY = "pvdisplay.backend_domain:run"
DEMO_ENTRY = "pvdisplay.guests.demo:run"
XENSTORED_START_TIMEOUT = 10.0
# libxl waits up to 10 s (LIBXL_DESTROY_TIMEOUT) for a backend to close a device.
BACKEND_RELEASE_TIMEOUT = 10.0
# A backend that dies sooner than this after starting is broken, not unlucky: no restart loop.
BACKEND_MIN_UPTIME = 2.0
_BACKEND_LET_GO = (xenbus.XenbusState.INIT_WAIT, xenbus.XenbusState.CLOSED)

DEMO_CONFIG = """\
# The `make demo` host: the display backend in domain 0 and two guests, one with two
# frontend-allocated connectors, one with a single be-alloc connector. Each connector
# has a PV input device (absolute pointer and multi-touch) bound to it by unique-id.
[backend]
name = "Domain-0"
domid = 0

[[guest]]
name = "alpha"
vdispl = ["backend=Domain-0,be-alloc=0,connectors=left:640x480;right:480x360"]
vkb = [
    "backend=Domain-0,unique-id=left,feature-abs-pointer=1,feature-multi-touch=1",
    "backend=Domain-0,unique-id=right,feature-abs-pointer=1,feature-multi-touch=1",
]

[[guest]]
name = "beta"
vdispl = ["backend=Domain-0,be-alloc=1,connectors=main:800x600"]
vkb = ["backend=Domain-0,unique-id=main,feature-abs-pointer=1,feature-multi-touch=1"]
"""


BACKEND_ONLY = toolstack.HostConfig(toolstack.BackendConfig("Domain-0", 0, copy=False), ())
"""`pvdisplay backend` without --config: the backend side alone, no guests."""


class HostError(Exception):
    """The emulated host could not start; the message says what to change."""


def apply_plan(xs: Client, plan: toolstack.NodePlan) -> None:
    """Apply a toolstack plan in one transaction, retried on conflict as libxl does."""

    def body(txn: Transaction) -> None:
        for path in plan.removals:
            with contextlib.suppress(FileNotFoundError):
                txn.rm(path)
        for write in plan.writes:
            txn.write(write.path, write.value)
            txn.set_permissions(write.path, list(write.permissions))

    xs.transact(body)


@dataclass
class RunningGuest:
    guest: toolstack.Guest
    domid: int
    process: DomainProcess
    devices: tuple[toolstack.Vdispl, ...]


@dataclass
class _Teardown:
    """What the backend's devices of a dead guest said before the host removed them."""

    states: dict[int, xenbus.XenbusState | None] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


class EmulatedHost:
    """One emulated Xen machine in `run_dir`; use as a context manager."""

    def __init__(
        self,
        config: toolstack.HostConfig,
        run_dir: Path,
        log_level: str = "warning",
        guest_entry: str = DEMO_ENTRY,
        log_file: Path | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.log_level = log_level
        self.log_file = log_file
        """Where every process of the host also appends the whole log, if anywhere."""
        self._log = None if log_file is None else logs.LogFile(log_file)
        self.guest_entry = guest_entry
        self.guests: dict[int, RunningGuest] = {}
        self.teardowns: dict[int, _Teardown] = {}
        self.backend: DomainProcess | None = None
        self._backend_started = 0.0
        self._xenstored: subprocess.Popen[bytes] | None = None
        self._xs: Client | None = None
        self._hv: DomainLauncher | None = None
        self._released: queue.Queue[int | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._run_dir_lock = RunDirLock(run_dir)

    @property
    def xenstore_dir(self) -> Path:
        return self.run_dir / "xenstore"

    @property
    def planes_socket(self) -> Path:
        return self.run_dir / "planes.sock"

    @property
    def xs(self) -> Client:
        if self._xs is None:
            raise RuntimeError("host not started")
        return self._xs

    @property
    def hv(self) -> DomainLauncher:
        if self._hv is None:
            raise RuntimeError("host not started")
        return self._hv

    def domain_socket(self, domid: int) -> Path:
        return self.xenstore_dir / "domain" / str(domid)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, guests: bool = True) -> None:
        """Bring up xenstored, the broker and the backend, then (if `guests`) every guest.

        Call it from a thread that outlives the host: xenstored ends when that thread does
        (Linux's parent-death signal follows the thread that started the process).
        """
        # Before anything in the run directory is touched: a second instance must leave
        # the first's sockets and xenstored alone.
        self._run_dir_lock.acquire()
        if self._log is not None:
            self._log.open()
        self._start_xenstored()
        self._hv = DomainLauncher(
            limits=self.config.limits,
            on_domain_released=self._released.put,
            log_level=self.log_level,
        )
        backend = self.config.backend
        apply_plan(self.xs, toolstack.domain_nodes(backend.domid, backend.name))
        self.start_backend()
        self._supervisor = threading.Thread(target=self._supervise, name="host-supervisor")
        self._supervisor.start()
        if guests:
            for guest in self.config.guests:
                self.start_guest(guest)

    def start_backend(self) -> DomainProcess:
        backend = self.config.backend
        args = backend_domain.domain_args(
            str(self.xenstore_dir),
            str(self.planes_socket),
            backend.copy,
            backend.page_budget,
            descriptor_budget=backend.descriptor_budget,
            planes_clients=backend.planes_clients,
        )
        self._backend_started = time.monotonic()
        self.backend = self.hv.start_domain(BACKEND_ENTRY, *args, domid=backend.domid)
        return self.backend

    def start_guest(
        self, guest: toolstack.Guest, entry: str | None = None, args: Sequence[str] = ()
    ) -> RunningGuest:
        """Create `guest` as a new domain: XenStore home and devices first, then its process.

        Each device (vdispl, then vkb) is written in a transaction of its own, as libxl does.

        The process runs `entry(hv, control, xenstore_socket, guest_name, *args)`.
        """
        with self._lock:
            domid = guest.domid if guest.domid is not None else self._next_domid()
            apply_plan(self.xs, toolstack.domain_nodes(domid, guest.name))
            # The emulated store needs no ring page; port 1 stands for the store channel.
            self.xs.introduce(domid, 0, 1)
            for device in guest.vdispls:
                apply_plan(self.xs, toolstack.vdispl_nodes(domid, device))
            for vkb in guest.vkbs:
                apply_plan(self.xs, vkb_config.vkb_nodes(domid, vkb, guest.vdispls))
            process = self.hv.start_domain(
                entry or self.guest_entry,
                str(self.domain_socket(domid)),
                guest.name,
                *args,
                domid=domid,
            )
            running = RunningGuest(guest, domid, process, guest.vdispls)
            self.guests[domid] = running
            self.teardowns[domid] = _Teardown()
        log.info("guest started", extra=logs.fields(domid=domid, name=guest.name))
        return running

    def restart_backend(self) -> DomainProcess:
        """Kill the backend domain and start it again; live guests are expected to reconnect."""
        with self._lock:
            old, self.backend = self.backend, None
        if old is not None:
            old.kill()
            old.wait()
            self.hv.wait_released(old.domid, BACKEND_RELEASE_TIMEOUT)
        with self._lock:
            return self.start_backend()

    def wait_guest_destroyed(
        self, domid: int, timeout: float
    ) -> dict[int, xenbus.XenbusState | None]:
        """Wait until a dead guest's nodes are gone; the backend states seen just before."""
        teardown = self.teardowns[domid]
        if not teardown.done.wait(timeout):
            raise TimeoutError(f"guest {domid} was not torn down within {timeout} s")
        return dict(teardown.states)

    def stop(self) -> None:
        """Stop the guests, the backend, the broker and xenstored, in that order."""
        if not self._run_dir_lock.held:
            return  # never started, or refused the run directory: nothing here is ours
        self._stopping.set()
        self._released.put(None)
        if self._supervisor is not None:
            self._supervisor.join()
        if self._hv is not None:
            for running in list(self.guests.values()):
                running.process.kill()
            self._hv.stop()
            self._hv = None
        if self._xs is not None:
            self._xs.close()
            self._xs = None
        if self._xenstored is not None:
            self._xenstored.terminate()
            try:
                self._xenstored.wait(5)
            except subprocess.TimeoutExpired:
                self._xenstored.kill()
                self._xenstored.wait()
            self._xenstored = None
        with contextlib.suppress(FileNotFoundError):
            self.planes_socket.unlink()
        if self._log is not None:
            self._log.close()
        self._run_dir_lock.release()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------

    def _start_xenstored(self) -> None:
        # A session of its own: Ctrl-C in the terminal must not stop the store before the
        # domains that still talk to it. It is stopped with SIGTERM, so it must not inherit
        # `run`'s blocked signals. Outside our process group, it must end with us even when
        # we are killed: it asks for SIGTERM when the thread starting it here exits.
        blocked = signal.pthread_sigmask(signal.SIG_SETMASK, set())
        self._xenstored = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from pvdisplay.toolstack.host import end_with_parent; "
                f"end_with_parent({os.getpid()}); "
                "from pvdisplay.cli import main; main()",
                "--log-level",
                self.log_level,
                "xenstored",
                "--socket-dir",
                str(self.xenstore_dir),
                *_quota_options(self.config.quotas),
            ],
            start_new_session=True,
        )
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        deadline = time.monotonic() + XENSTORED_START_TIMEOUT
        socket_path = self.xenstore_dir / "socket"
        while True:
            if self._xenstored.poll() is not None:
                raise OSError(f"xenstored exited with status {self._xenstored.returncode}")
            try:
                self._xs = Client(socket_path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"xenstored did not listen on {socket_path}") from None
                time.sleep(0.02)

    def _next_domid(self) -> int:
        taken = {self.config.backend.domid, *self.hv.domains}
        taken |= {g.domid for g in self.config.guests if g.domid is not None}
        return max(taken) + 1

    def _supervise(self) -> None:
        while (domid := self._released.get()) is not None:
            if self._stopping.is_set():
                continue
            if domid == self.config.backend.domid:
                self._backend_died()
            elif domid in self.guests:
                self._destroy_guest(self.guests[domid])

    def _backend_died(self) -> None:
        with self._lock:
            backend = self.backend
            if backend is None or backend.returncode is None:
                return  # restart_backend() replaced it on purpose
            uptime = time.monotonic() - self._backend_started
            if uptime < BACKEND_MIN_UPTIME:
                log.error(
                    "backend exited right after starting; not restarting it",
                    extra=logs.fields(status=backend.returncode, uptime=round(uptime, 2)),
                )
                return
            log.warning("backend died; restarting it", extra=logs.fields(status=backend.returncode))
            try:
                self.start_backend()
            except (OSError, HypervisorError):
                log.exception("backend restart failed")

    def _destroy_guest(self, running: RunningGuest) -> None:
        domid = running.domid
        log.info(
            "guest died",
            extra=logs.fields(
                domid=domid, name=running.guest.name, status=running.process.returncode
            ),
        )
        teardown = self.teardowns[domid]
        try:
            self.xs.release(domid)
            teardown.states = self._await_backend_release(domid, running.devices)
            self._await_backend_release(domid, running.guest.vkbs)
            for path in toolstack.guest_teardown_paths(domid, running.devices, running.guest.vkbs):
                self._remove_with_empty_parents(path)
        except (OSError, ConnectionError):
            log.exception("guest teardown failed", extra=logs.fields(domid=domid))
        finally:
            with self._lock:
                self.guests.pop(domid, None)
            teardown.done.set()

    def _remove_with_empty_parents(self, path: str) -> None:
        """Remove `path`, then each parent left empty, up to a domain's home (as libxl does)."""
        with contextlib.suppress(FileNotFoundError):
            self.xs.rm(path)
            parent = path.rsplit("/", 1)[0]
            while parent.count("/") > 3 and not self.xs.ls(parent):
                self.xs.rm(parent)
                parent = parent.rsplit("/", 1)[0]

    def _await_backend_release(
        self, domid: int, devices: Sequence[toolstack.Vdispl | vkb_config.Vkb]
    ) -> dict[int, xenbus.XenbusState | None]:
        """Wait (bounded) until the backend has let go of each device of a dead guest."""
        states: dict[int, xenbus.XenbusState | None] = {}
        deadline = time.monotonic() + BACKEND_RELEASE_TIMEOUT
        for device in devices:
            kind = device.backend_kind
            path = xenbus.backend_path(device.backend_domid, kind, domid, device.devid)
            with self.xs.watch(f"{path}/{xenbus.FIELD_STATE}") as watch:
                while True:
                    states[device.devid] = self._read_state(f"{path}/{xenbus.FIELD_STATE}")
                    if states[device.devid] in _BACKEND_LET_GO:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        log.warning(
                            "backend did not release device",
                            extra=logs.fields(domid=domid, kind=kind, devid=device.devid),
                        )
                        break
                    watch.get(remaining)
        return states

    def _read_state(self, path: str) -> xenbus.XenbusState | None:
        try:
            return xenbus.parse_state(self.xs.read(path))
        except (FileNotFoundError, ValueError):
            return None


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when `parent`'s thread that started it
    exits; exit now if `parent` is already gone (it died before the request was made)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        sys.exit(f"parent process {parent} is gone")


def describe(host: EmulatedHost, command: str = "pvdisplay") -> str:
    """Where everything is, for the person who just started the host; the examples run
    `command`, the host's own command as this person can type it."""
    lines = [
        f"pvdisplay emulated host in {host.run_dir}",
        f"  xenstored  {host.xenstore_dir / 'socket'}"
        f"  (XENSTORED_PATH={host.xenstore_dir / 'socket'} xenstore-ls /local/domain)",
        f"  planes     {host.planes_socket}",
        f"  backend    domain {host.config.backend.domid}"
        + (" (copying each flip: --copy)" if host.config.backend.copy else " (zero-copy)"),
    ]
    if host.log_file is not None:
        lines.append(f"  log        {host.log_file}  (--log-level info shows it here too)")
    examples = []
    # Copied as they are, the examples must reach this host, not the default run dir's.
    socket_option = (
        "" if host.run_dir == default_run_dir() else f" --planes-socket {host.planes_socket}"
    )
    if not host.guests:
        lines.append("  guests     none (guests come from --config FILE, see docs/host.md)")
    for running in sorted(host.guests.values(), key=lambda r: r.domid):
        lines.append(f"  guest      domain {running.domid} {running.guest.name!r}")
        for device in running.devices:
            mode = "be-alloc" if device.be_alloc else "frontend-allocated"
            for index, connector in enumerate(device.connectors):
                lines.append(
                    f"               vdispl {device.devid} connector {index} "
                    f"{connector.unique_id!r} {connector.width}x{connector.height} ({mode})"
                )
                for vkb in running.guest.vkbs:
                    if vkb.unique_id == connector.unique_id:
                        lines.append(
                            f"                 input: vkb {vkb.devid} ({_vkb_features(vkb)})"
                        )
                device_option = f" --device {device.devid}" if device.devid else ""
                examples.append(
                    f"  {command} snapshot{socket_option} {running.domid} "
                    f"{connector.unique_id}{device_option}"
                    f" -o {running.guest.name}-{connector.unique_id}.png"
                )
    if examples:
        lines += ["snapshots:", *examples]
    return "\n".join(lines)


def _vkb_features(vkb: vkb_config.Vkb) -> str:
    features = [
        name
        for name, enabled in (
            ("keyboard", not vkb.disable_keyboard),
            (
                "absolute pointer" if vkb.abs_pointer else "relative pointer",
                not vkb.disable_pointer,
            ),
            ("multi-touch", vkb.multi_touch),
        )
        if enabled
    ]
    return ", ".join(features) or "nothing enabled"


class _StopSignals:
    """The first SIGINT or SIGTERM noted on `read_end`; any later one is ignored."""

    STOP: Final = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, read_end: int) -> None:
        self.read_end = read_end

    def poll(self) -> signal.Signals | None:
        """The stop signal that came already, else None at once."""
        return self._take(block=False)

    def wait(self) -> signal.Signals:
        """The stop signal, once one comes."""
        number = self._take(block=True)
        assert number is not None
        return number

    def _take(self, *, block: bool) -> signal.Signals | None:
        # This thread starts nothing more, so it may take them itself while it waits.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.STOP)
        os.set_blocking(self.read_end, block)
        try:
            while (number := os.read(self.read_end, 1)[0]) not in self.STOP:
                pass
        except BlockingIOError:
            return None
        # A second Ctrl-C must not cut the teardown short.
        for each in self.STOP:
            signal.signal(each, signal.SIG_IGN)
        return signal.Signals(number)


@contextlib.contextmanager
def _stop_signals() -> Iterator[_StopSignals]:
    """SIGINT and SIGTERM, noted on a pipe whichever thread the kernel hands them to.

    Ctrl-C signals the whole process group. Blocked from here on, the signals stay blocked
    in every thread and process the host starts (the mask survives exec), so only the host
    reacts, and it stops guests, backend, broker and xenstored in that order. A thread
    started earlier (numpy's BLAS threads) does not block them; there the default action
    would end the process mid-start or mid-teardown and leave xenstored behind, so a
    handler takes them instead.
    """
    stop = _StopSignals.STOP
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    old_fd = signal.set_wakeup_fd(write_end)
    old_handlers = {number: signal.signal(number, _noted) for number in stop}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        yield _StopSignals(read_end)
    finally:
        signal.set_wakeup_fd(old_fd)
        for number, handler in old_handlers.items():
            if handler is not None:
                signal.signal(number, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(read_end)
        os.close(write_end)


def _noted(number: int, frame: FrameType | None) -> None:
    """Nothing to do: `signal.set_wakeup_fd` has put the signal on the pipe already."""


def _quota_options(quotas: Quotas) -> list[str]:
    """`pvdisplay xenstored` options for the quotas that differ from its defaults."""
    defaults = Quotas()
    return [
        f"--quota={f.name.replace('_', '-')}={getattr(quotas, f.name)}"
        for f in fields(Quotas)
        if getattr(quotas, f.name) != getattr(defaults, f.name)
    ]


def run(
    config: toolstack.HostConfig,
    run_dir: Path,
    log_level: str,
    web: tuple[str, int] | None = None,
    command: str = "pvdisplay",
) -> None:
    """Run the host (and the web viewer on `web`) until SIGINT or SIGTERM, then tear
    everything down in order: `pvdisplay demo` and `pvdisplay backend`, started as
    `command`. The whole log goes to `LOG_NAME` in the run directory. A signal that came
    while the host started ends it as soon as it is up, without a banner (and, for
    SIGINT, raises KeyboardInterrupt once it is torn down)."""
    with _stop_signals() as signals:
        host = EmulatedHost(config, run_dir, log_level, log_file=run_dir / LOG_NAME)
        try:
            host.start()
        except RunDirBusyError:
            raise HostError(
                f"{run_dir} is in use by another running pvdisplay demo or backend; stop it "
                "or pass another --run-dir"
            ) from None
        except RunDirUnusableError as error:
            raise HostError(
                f"cannot use {run_dir} as the run directory: {error.strerror}; pass another "
                "--run-dir"
            ) from None
        except (OSError, TimeoutError, HypervisorError, ConnectionError) as error:
            host.stop()
            raise HostError(f"cannot start the emulated host in {run_dir}: {error}") from None
        viewer = None
        try:
            if web is not None:
                try:
                    viewer = BackgroundViewer(
                        host.planes_socket,
                        *web,
                        xenstore_socket=host.xenstore_dir / "socket_ro",
                        max_clients=config.web_clients,
                    )
                except OSError as error:
                    raise HostError(
                        f"cannot serve the web viewer on {format_address(*web)}: "
                        f"{bind_failure(error)}; pass a free --listen HOST:PORT, or --no-web"
                    ) from None
            interrupted = signals.poll()
            received = interrupted
            if received is None:
                print(describe(host, command), flush=True)
                if viewer is not None:
                    print(f"  web viewer {viewer.url}", flush=True)
                print("stop with Ctrl-C", flush=True)
                received = signals.wait()
            log.info("stopping", extra=logs.fields(signal=received.name))
        finally:
            if viewer is not None:
                viewer.close()
            host.stop()
    if interrupted == signal.SIGINT:
        raise KeyboardInterrupt
