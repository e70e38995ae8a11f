"""Byte-exact, sans-IO codecs for the Xen public headers pvdisplay speaks."""

from pvdisplay.wire.errors import ProtocolError

__all__ = ["ProtocolError"]
