"""Opening the Linux Xen devices and calling their ioctls, with failures as HypervisorError."""

import errno
import fcntl
import os
from collections.abc import Callable

from pvdisplay.hv import HypervisorError

DEVICE_DIR = "/dev/xen"
"""Where udev puts the Xen character devices (gntdev, gntalloc, evtchn, xenbus)."""

Ioctl = Callable[[int, int, bytearray | int], int]
"""ioctl(fd, request, argument): the kernel's return value; a bytearray argument is
updated in place with what the kernel wrote back."""


def open_device(name: str, flags: int = 0) -> int:
    """Open /dev/xen/`name` close-on-exec; ENOENT names the kernel option it needs."""
    path = os.path.join(DEVICE_DIR, name)
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC | flags)
    except OSError as exc:
        hint = f" (is xen-{name} loaded? needs CONFIG_XEN_{name.upper()})"
        raise HypervisorError(
            exc.errno or errno.EIO,
            f"cannot open {path}: {exc.strerror}{hint if exc.errno == errno.ENOENT else ''}",
        ) from None


def ioctl(fd: int, request: int, argument: bytearray | int) -> int:
    """Call one ioctl, letting the kernel write back into `argument`; errno as HypervisorError."""
    try:
        if isinstance(argument, int):
            return int(fcntl.ioctl(fd, request, argument))
        return int(fcntl.ioctl(fd, request, argument, True))
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise HypervisorError(code, f"ioctl {request:#x} failed: {os.strerror(code)}") from None
