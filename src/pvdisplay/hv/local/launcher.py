"""The emulated host: starts the broker process and domain processes, tears them down.

    with DomainLauncher(on_domain_released=store.release) as host:
        backend = host.start_domain("pvdisplay.display.back:run", domid=0)
        guest = host.start_domain("pvdisplay.display.front:run")

A domain is a process running `entry(hv, control, *args)`, where `entry` is given as
"package.module:function", `hv` is its `pvdisplay.hv.Hypervisor` and `control` a
`multiprocessing.connection.Connection` to `DomainProcess.control` in the host (for
tests and supervision; domains talk to each other through XenStore, rings and events).
"""

import errno
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Self

from pvdisplay import logs
from pvdisplay.hv import DOMID_FIRST_RESERVED, HypervisorError
from pvdisplay.hv.local.broker import limits_argument
from pvdisplay.hv.local.tables import Limits
from pvdisplay.ipc.framing import FramedMessage, JsonObject
from pvdisplay.ipc.sockets import close_all, receive_message, send_message

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 30.0


@dataclass
class DomainProcess:
    domid: int
    process: "subprocess.Popen[bytes]"
    control: Connection

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)


class DomainLauncher:
    """Owns the broker and every domain; `on_domain_released(domid)` is the @releaseDomain hook.

    The hook runs on a thread of its own, once per domain and in release order, after
    the broker has torn the domain down (ports closed, grants ended, mappings dropped).
    It may call back into the host.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        on_domain_released: Callable[[int], None] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.limits = limits or Limits()
        self._on_released = on_domain_released
        self._log_level = log_level
        self._domains: dict[int, DomainProcess] = {}
        self._released: dict[int, threading.Event] = {}
        self._replies: queue.Queue[FramedMessage] = queue.Queue()
        self._releases: queue.Queue[int | None] = queue.Queue()
        self._lock = threading.Lock()
        self._next_domid = 1
        control, broker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control = control
        try:
            self._broker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pvdisplay.hv.local.broker",
                    str(broker_end.fileno()),
                    limits_argument(self.limits),
                ],
                pass_fds=(broker_end.fileno(),),
                env={**os.environ, "PVDISPLAY_HV_LOG_LEVEL": log_level},
            )
        finally:
            broker_end.close()
        self._reader = threading.Thread(target=self._read_control, name="hv-host", daemon=True)
        self._reader.start()
        self._announcer = threading.Thread(
            target=self._announce_releases, name="hv-released", daemon=True
        )
        self._announcer.start()

    @property
    def broker_pid(self) -> int:
        return self._broker.pid

    @property
    def domains(self) -> dict[int, DomainProcess]:
        return dict(self._domains)

    def start_domain(self, entry: str, *args: str, domid: int | None = None) -> DomainProcess:
        """Start a process running `entry(hv, control, *args)` as domain `domid`."""
        with self._lock:
            if domid is None:
                domid = self._next_domid
            # As in Xen, a domain id is free again once its domain is destroyed.
            alive = domid in self._domains and not self._released[domid].is_set()
            if alive or not 0 <= domid < DOMID_FIRST_RESERVED:
                raise HypervisorError(errno.EEXIST, f"domain {domid} exists or is reserved")
            self._next_domid = max(self._next_domid, domid + 1)
            self._released[domid] = threading.Event()
        hv_sock, broker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with hv_sock, broker_end, child_control:
            process = subprocess.Popen(
                [sys.executable, "-m", "pvdisplay.hv.local.domain", entry, *args],
                pass_fds=(hv_sock.fileno(), child_control.fileno()),
                env={
                    **os.environ,
                    "PVDISPLAY_HV_DOMID": str(domid),
                    "PVDISPLAY_HV_FD": str(hv_sock.fileno()),
                    "PVDISPLAY_HV_CONTROL_FD": str(child_control.fileno()),
                    "PVDISPLAY_HV_PATH": json.dumps(sys.path),
                    "PVDISPLAY_HV_LOG_LEVEL": self._log_level,
                },
            )
            try:
                pidfd = os.pidfd_open(process.pid)
                try:
                    self._request(
                        {"op": "add_domain", "domid": domid}, [broker_end.fileno(), pidfd]
                    )
                finally:
                    os.close(pidfd)
            except BaseException:
                process.kill()
                process.wait()
                control.close()
                raise
        domain = DomainProcess(domid, process, Connection(control.detach()))
        self._domains[domid] = domain
        log.info("domain started", extra=logs.fields(domid=domid, pid=process.pid, entry=entry))
        return domain

    def wait_released(self, domid: int, timeout: float) -> bool:
        """True once the broker has released `domid` (its process died or left)."""
        event = self._released.get(domid)
        return event is not None and event.wait(timeout)

    def stats(self) -> dict[str, int]:
        """Sizes of the broker's tables and how many descriptors it holds."""
        return _ints(self._request({"op": "stats"}).body)

    def usage(self, domid: int) -> dict[str, int]:
        """What `domid` uses against its limits."""
        return _ints(self._request({"op": "usage", "domid": domid}).body)

    def stop(self) -> None:
        """Kill every domain still running, then the broker."""
        for domain in self._domains.values():
            domain.kill()
            domain.wait()
            domain.control.close()
        if self._broker.poll() is None:
            try:
                self._request({"op": "shutdown"})
            except (HypervisorError, OSError):
                self._broker.kill()
            self._broker.wait()
        self._control.close()
        self._reader.join()
        self._releases.put(None)
        self._announcer.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _request(self, body: JsonObject, fds: list[int] | None = None) -> FramedMessage:
        with self._lock:
            send_message(self._control, body, fds or [])
            try:
                reply = self._replies.get(timeout=REPLY_TIMEOUT)
            except queue.Empty:
                raise HypervisorError(errno.ETIMEDOUT, "broker did not answer") from None
        error = reply.body.get("error")
        if isinstance(error, int):
            raise HypervisorError(error, str(reply.body.get("message")))
        return reply

    def _read_control(self) -> None:
        while True:
            try:
                message = receive_message(self._control)
            except (EOFError, OSError):
                return
            close_all(message.fds)
            domid = message.body.get("domid")
            if message.body.get("event") == "released" and isinstance(domid, int):
                self._releases.put(domid)
            else:
                self._replies.put(message)

    def _announce_releases(self) -> None:
        while (domid := self._releases.get()) is not None:
            if self._on_released is not None:
                try:
                    self._on_released(domid)
                except Exception:
                    log.exception("on_domain_released failed", extra=logs.fields(domid=domid))
            event = self._released.get(domid)
            if event is not None:
                event.set()


def _ints(body: JsonObject) -> dict[str, int]:
    return {key: value for key, value in body.items() if isinstance(value, int)}
