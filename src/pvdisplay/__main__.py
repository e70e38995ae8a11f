"""The `pvdisplay` command's entry point, also `python -m pvdisplay`.

Loading the command takes a moment; Ctrl-C during it ends the command quietly, with
the status a shell gives a command Ctrl-C stopped, as it does once the command runs.
"""

import sys

INTERRUPTED = 130  # 128 + SIGINT


def run() -> None:
    try:
        from pvdisplay.cli import main  # noqa: PLC0415 (inside the try: see above)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    main()


if __name__ == "__main__":
    run()
