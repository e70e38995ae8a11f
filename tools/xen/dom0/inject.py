"""Send input events to a connector through the planes socket, as the web viewer does.

Usage: inject.py PLANES_SOCKET DOMID CONNECTOR EVENT...
EVENT is key:CODE:1|0 (press or release a Linux key code) or pointer:X:Y (connector pixels).
"""

import sys

from pvdisplay.planes.client import PlaneClient
from pvdisplay.planes.input_events import InputEvent, Key, PointerMove
from pvdisplay.planes.model import PlaneKey


def parse(text: str) -> InputEvent:
    kind, *values = text.split(":")
    if kind == "key":
        return Key(int(values[0]), values[1] == "1")
    if kind == "pointer":
        return PointerMove(int(values[0]), int(values[1]))
    raise SystemExit(f"unknown event {text!r}")


def main() -> None:
    socket_path, domid, connector, *events = sys.argv[1:]
    with PlaneClient(socket_path) as client:
        receipt = client.send_input(
            PlaneKey(int(domid), 0, int(connector)), [parse(event) for event in events]
        )
    print(f"sent {len(events)} events: {receipt}")


if __name__ == "__main__":
    main()
