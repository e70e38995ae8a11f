"""One running instance per run directory.

Everything a running host or backend puts in its run directory (the planes socket,
xenstored's sockets) is replaced at start, so a second instance on the same directory
would take over the first's sockets and leave it serving no one. The first instance
holds an exclusive `flock` on `lock` in the directory for as long as it runs; the kernel
releases it however the process ends, so a crashed instance never blocks the next.
"""

import errno
import fcntl
import os
from pathlib import Path
from typing import Self


class RunDirBusyError(OSError):
    """Another running instance holds the run directory."""


LOG_NAME = "pvdisplay.log"
"""The file in a run directory every process of its instance appends its log to."""


class RunDirUnusableError(OSError):
    """The run directory cannot be created or written."""


def default_run_dir() -> Path:
    return Path(f"/tmp/pvdisplay-{os.getuid()}")


class RunDirLock:
    """The exclusive hold on a run directory; `acquire` before touching anything in it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Create the directory if needed and take the lock; RunDirBusyError if it is taken,
        RunDirUnusableError if the directory or its lock file cannot be made."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise RunDirUnusableError(error.errno, error.strerror, str(self.path.parent)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusyError(
                errno.EBUSY, "another pvdisplay instance is running there", str(self.path.parent)
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
