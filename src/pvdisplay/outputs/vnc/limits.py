"""Where the VNC server listens and how many it serves, unless told otherwise.

Light on purpose: the command's --help reads these without loading the server.
"""

from typing import Final

from pvdisplay.outputs.listen import DEFAULT_HOST

DEFAULT_PORT: Final = 5900
DEFAULT_LISTEN: Final = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_MAX_CLIENTS: Final = 16
"""Clients served at once over all connectors: each costs an encoder's state and a frame."""
