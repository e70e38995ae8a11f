"""The errno-carrying exceptions every layer raises: bad bytes from a peer, a failed
hypervisor call."""

import errno as _errno


class ProtocolError(ValueError):
    """Bad bytes from a peer.

    Carries the errno a backend answers with, so callers can turn any decode
    failure straight into a response status without a lookup table.
    """

    def __init__(self, errno: int, message: str) -> None:
        if errno <= 0:
            raise ValueError(f"errno must be positive, got {errno}")
        super().__init__(f"{message} [{_errno.errorcode.get(errno, errno)}]")
        self.errno = errno
        self.message = message

    @property
    def status(self) -> int:
        """The negative errno a displif/kbdif response carries."""
        return -self.errno

    def __repr__(self) -> str:
        return f"ProtocolError({_errno.errorcode.get(self.errno, self.errno)}, {self.message!r})"


class HypervisorError(OSError):
    """A hypervisor call failed; `.errno` is what the Linux device would have returned."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(errno, f"{message} [{_errno.errorcode.get(errno, errno)}]")
        self.message = message
