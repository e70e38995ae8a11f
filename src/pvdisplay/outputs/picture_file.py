"""Pictures saved to files, PNG or JPEG as the file's suffix says."""

from pathlib import Path

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
JPEG_QUALITY = 90


def check_suffix(path: Path) -> str:
    """The format `path`'s suffix names; ValueError naming the suffixes there are."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"{str(path)!r}: cannot tell the picture format from the suffix "
            f"{path.suffix or '(none)'}; end the name with .png, .jpg or .jpeg"
        ) from None


def save(rgb: npt.NDArray[np.uint8], path: Path) -> None:
    """Write packed RGB rows (height x width x 3) to `path`; OSError if it cannot."""
    if check_suffix(path) == "JPEG":
        path.write_bytes(simplejpeg.encode_jpeg(rgb, JPEG_QUALITY, colorspace="RGB"))
    else:
        Image.fromarray(rgb, "RGB").save(path, format="PNG")
