"""The process a domain runs in: `python -m pvdisplay.hv.local.domain module:function ARGS`.

The host passes the domain's broker socket and control connection as inherited
descriptors and names them in the environment, with the domain id and the host's
`sys.path` (so entry points importable in the host are importable here).
"""

import ctypes
import importlib
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

from pvdisplay import logs
from pvdisplay.hv.local.client import LocalHypervisor
from pvdisplay.ipc.sockets import raise_descriptor_limit

EntryPoint = Callable[..., object]


def resolve(entry: str) -> EntryPoint:
    module_name, _, function_name = entry.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    if not callable(function):
        raise TypeError(f"{entry} is not callable")
    return function  # type: ignore[no-any-return]


def main(argv: Sequence[str]) -> int:
    entry, *args = argv
    env = os.environ
    sys.path[:0] = [p for p in json.loads(env["PVDISPLAY_HV_PATH"]) if p not in sys.path]
    logs.configure(env.get("PVDISPLAY_HV_LOG_LEVEL", "warning"))
    pr_set_dumpable = 4
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)
    raise_descriptor_limit()
    hv_fd = int(env["PVDISPLAY_HV_FD"])
    control_fd = int(env["PVDISPLAY_HV_CONTROL_FD"])
    for fd in (hv_fd, control_fd):
        os.set_inheritable(fd, False)
    hv = LocalHypervisor(socket.socket(fileno=hv_fd), int(env["PVDISPLAY_HV_DOMID"]))
    control = Connection(control_fd)
    try:
        resolve(entry)(hv, control, *args)
    finally:
        hv.close()
        control.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
