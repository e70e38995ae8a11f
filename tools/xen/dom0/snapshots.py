"""Take snapshots of connectors in one process, as `pvdisplay snapshot` takes one.

Under TCG a python3 start with pvdisplay's CLI imports takes many seconds, longer than a
guest's flip test may last; this imports only what a snapshot needs and takes them all.
Usage: snapshots.py PLANES_SOCKET DOMID COUNT LABEL:CONNECTOR... (PNG per label and round
in /tmp/snap-LABEL-ROUND.png, the first as soon as the connector shows a frame).
"""

import sys
import time
from pathlib import Path

from pvdisplay.outputs import snapshot
from pvdisplay.planes.client import PlaneClient

PATIENCE = 45.0


def main() -> None:
    socket_path, domid_text, count_text, *targets = sys.argv[1:]
    domid, count = int(domid_text), int(count_text)
    deadline = time.monotonic() + PATIENCE
    for round_ in range(1, count + 1):
        for target in targets:
            label, connector = target.split(":")
            while True:
                try:
                    with PlaneClient(socket_path) as client:
                        shot = snapshot.take(client, domid, int(connector))
                    break
                except OSError as error:
                    if time.monotonic() > deadline:
                        print(f"{label}: no snapshot: {error}")
                        return
                    time.sleep(0.2)
            out = Path(f"/tmp/snap-{label}-{round_}.png")
            snapshot.save_png(shot, out)
            plane = shot.plane
            print(f"{out}: {plane.width}x{plane.height} {plane.fourcc} frame {plane.frame}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
