"""The backend's CPU per page flip on real Xen: its process's CPU time over a window, divided
by the frames one connector presented in it (read from the planes socket).

Usage: flip_cost.py PLANES_SOCKET BACKEND_PID DOMID SECONDS. Prints one line; the figure
includes whatever else the backend did in the window (XenStore, the web viewer's feed).
"""

import os
import sys
import time

from pvdisplay.planes.client import PlaneClient


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of proc(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frame(socket_path: str, domid: int) -> int:
    with PlaneClient(socket_path) as client:
        shown = [plane.frame for plane in client.list() if plane.domid == domid]
    return max(shown, default=0)


def main(socket_path: str, pid: int, domid: int, seconds: float) -> None:
    frame0, cpu0, wall0 = frame(socket_path, domid), cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    frame1, cpu1, wall1 = frame(socket_path, domid), cpu_seconds(pid), time.monotonic()
    flips = frame1 - frame0
    cpu = cpu1 - cpu0
    per_flip = f"{cpu / flips * 1e6:.0f} us a flip" if flips else "no flips"
    print(
        f"backend CPU over {wall1 - wall0:.1f} s: {cpu * 1e3:.0f} ms, {flips} flips"
        f" ({flips / (wall1 - wall0):.1f}/s), {per_flip},"
        f" {cpu / (wall1 - wall0) * 100:.1f}% of a core"
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
