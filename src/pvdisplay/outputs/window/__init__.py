"""`pvdisplay view`: one guest connector in a local window (pygame/SDL 2), with input.

pygame prints a banner when first imported unless told not to; this package is imported
by the `pvdisplay` command, whose output that banner would spoil.
"""

import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
