"""Take snapshots of connectors in one process, as `pvdisplay snapshot` takes one.

Under TCG a python3 start with pvdisplay's CLI imports takes many seconds, longer than a
guest's flip test may last; this imports only what a snapshot needs and takes them all.
Usage: snapshots.py PLANES_SOCKET DOMID COUNT LABEL:CONNECTOR... (PNG per label and round
in /tmp/snap-LABEL-ROUND.png: COUNT of each connector in turn, the first as soon as it
shows a frame).
"""

import sys
import time
from pathlib import Path

from pvdisplay.outputs import picture_file, snapshot
from pvdisplay.planes.client import PlaneClient

PATIENCE = 240.0
"""How long to wait for a connector's first frame: the guest may still be booting."""


def take(socket_path: str, domid: int, connector: int, patience: float) -> snapshot.Snapshot:
    """A snapshot as soon as the connector shows a frame (OSError after `patience` s)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with PlaneClient(socket_path) as client:
                return snapshot.take(client, domid, connector)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    socket_path, domid_text, count_text, *targets = sys.argv[1:]
    domid, count = int(domid_text), int(count_text)
    for target in targets:  # connector by connector: a guest may drive one at a time
        label, connector = target.split(":")
        for round_ in range(1, count + 1):
            try:
                shot = take(socket_path, domid, int(connector), PATIENCE if round_ == 1 else 5.0)
            except OSError as error:
                print(f"{label}: no snapshot: {error}")
                break
            out = Path(f"/tmp/snap-{label}-{round_}.png")
            picture_file.save(shot.rgb, out)
            plane = shot.plane
            print(f"{out}: {plane.width}x{plane.height} {plane.fourcc} frame {plane.frame}")
            time.sleep(0.5)


if __name__ == "__main__":
    main()
