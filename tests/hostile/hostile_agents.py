"""Hostile domains for tests/hostile: each runs `agent(hv, control)` and carries out attacks
the test names over the control connection, answering ("ok", result) or ("error", errno,
message). This module holds no tests; the domain processes import it.
"""

import errno
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from pvdisplay.hv import GuestMemory, Hypervisor, HypervisorError

REPLY_TIMEOUT = 60.0


class Attacker:
    """Holds what its attacks made until the domain dies: a hostile guest frees nothing."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self.memory: list[GuestMemory] = []
        self.ports: list[int] = []

    def share_until_refused(self, grantee: int, most: int) -> tuple[int, int | None]:
        """share(grantee, 1) in a loop: how many succeeded, and the errno that stopped it."""
        for count in range(most):
            try:
                self.memory.append(self.hv.grants.share(grantee, 1)[0])
            except HypervisorError as exc:
                return count, exc.errno
        return most, None

    def bind_until_refused(self, remote: int, most: int) -> tuple[int, int | None]:
        for count in range(most):
            try:
                self.ports.append(self.hv.events.bind_unbound_port(remote))
            except HypervisorError as exc:
                return count, exc.errno
        return most, None

    def share_one(self, grantee: int) -> int:
        """One honest share, kept: the ref."""
        memory, refs = self.hv.grants.share(grantee, 1)
        self.memory.append(memory)
        return refs[0]


def agent(hv: Hypervisor, control: Connection) -> None:
    attacker = Attacker(hv)
    while True:
        try:
            name, args = control.recv()
        except EOFError:
            return
        method: Callable[..., Any] = getattr(attacker, name)
        try:
            control.send(("ok", method(*args), None))
        except OSError as exc:
            control.send(("error", str(exc), exc.errno or errno.EIO))


class Remote:
    """The test's end of an attacker domain."""

    def __init__(self, control: Connection) -> None:
        self.control = control

    def __call__(self, method: str, *args: Any) -> Any:
        self.control.send((method, args))
        if not self.control.poll(REPLY_TIMEOUT):
            raise TimeoutError(f"the attacker did not answer {method}")
        status, value, code = self.control.recv()
        if status == "error":
            raise OSError(code, value)
        return value
