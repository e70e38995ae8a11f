"""The entry points of the `pvdisplay` and `pvdisplay-vhost-user-gpu` commands, and of
`python -m pvdisplay`.

Loading a command takes a moment; Ctrl-C during it ends the command quietly, with the
status a shell gives a command Ctrl-C stopped, as it does once the command runs.
"""

import contextlib
import sys
from collections.abc import Iterator

from pvdisplay.exit_status import INTERRUPTED


@contextlib.contextmanager
def _loading() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


def run() -> None:
    with _loading():
        from pvdisplay.cli import main  # noqa: PLC0415 (inside _loading: see above)
    main()


def run_vhost_user_gpu() -> None:
    """QEMU's vhost-user back-end convention: a program of its own name."""
    with _loading():
        from pvdisplay.cli import vhost_user_gpu  # noqa: PLC0415 (inside _loading: see above)
    vhost_user_gpu()


if __name__ == "__main__":
    run()
