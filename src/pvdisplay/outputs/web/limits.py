"""Where the web viewer listens and how many it serves, unless told otherwise.

Light on purpose: the command's --help and the toolstack's config read these without
loading the aiohttp server.
"""

from typing import Final

from pvdisplay.outputs.listen import DEFAULT_HOST

DEFAULT_PORT: Final = 8080
DEFAULT_LISTEN: Final = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_MAX_CLIENTS: Final = 32
"""WebSockets (viewers and index pages) served at once; more are answered 503. Each
viewer holds at most `session.WINDOW` unacknowledged frames."""
