"""What one input backend gives a vkb device that its config leaves out."""

MAX_CONTACTS = 256  # contact_id is a u8
DEFAULT_CONTACTS = 10
DEFAULT_RESOLUTION = (800, 600)
"""The pointer range of a vkb when the guest has no connector (xenfb's default mode)."""
