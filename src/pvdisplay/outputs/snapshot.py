"""`pvdisplay snapshot`: one frame of what a connector shows now, as RGB.

Reads only the planes socket: the backend copies one frame of the picture while the
guest cannot complete a flip (so it cannot tear), the copy arrives as descriptors
(SCM_RIGHTS), and is converted from any of the nine displif formats to RGB.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.model import PlaneInfo
from pvdisplay.wire import fourcc


@dataclass(frozen=True)
class Snapshot:
    plane: PlaneInfo
    rgb: npt.NDArray[np.uint8]


def take(client: PlaneClient, domid: int, connector: int, devid: int = 0) -> Snapshot:
    """One frame of the connector's picture as packed RGB; FileNotFoundError if blank."""
    info, pixels = client.snapshot(domid, connector, devid)
    fmt = fourcc.by_fourcc(fourcc.fourcc_code(info.fourcc))
    return Snapshot(info, fourcc.to_rgb(fmt, pixels, info.width, info.height, info.stride))
