"""`pvdisplay snapshot`: the plane a connector shows now, saved as a PNG.

Reads only the planes socket: the backend copies one frame of the picture while the
guest cannot complete a flip (so it cannot tear), the copy arrives as descriptors
(SCM_RIGHTS), and is converted from any of the nine displif formats to RGB.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.model import PlaneInfo
from pvdisplay.wire import fourcc


@dataclass(frozen=True)
class Snapshot:
    plane: PlaneInfo
    rgb: npt.NDArray[np.uint8]


def resolve_connector(client: PlaneClient, domid: int, devid: int, connector: str) -> int:
    """A connector index from an index or a unique-id; LookupError names the choices."""
    planes = [p for p in client.list() if p.domid == domid and p.devid == devid]
    if connector.isdecimal():
        return int(connector)
    for plane in planes:
        if plane.unique_id == connector:
            return plane.connector
    choices = ", ".join(f"{p.connector} ({p.unique_id})" for p in planes) or "none"
    raise LookupError(
        f"domain {domid} device {devid} has no connector {connector!r}; has {choices}"
    )


def take(client: PlaneClient, domid: int, connector: int, devid: int = 0) -> Snapshot:
    """The connector's current picture as packed RGB; FileNotFoundError if it shows nothing."""
    info, pixels = client.snapshot(domid, connector, devid)
    fmt = fourcc.by_fourcc(fourcc.fourcc_code(info.fourcc))
    return Snapshot(info, fourcc.to_rgb(fmt, pixels, info.width, info.height, info.stride))


def save_png(snapshot: Snapshot, path: Path) -> None:
    Image.fromarray(snapshot.rgb, "RGB").save(path, format="PNG")
