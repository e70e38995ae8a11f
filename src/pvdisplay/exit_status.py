"""Exit statuses the `pvdisplay` commands share beyond click's own (1 and 2)."""

INTERRUPTED = 130
"""The status a shell gives a command Ctrl-C stopped: 128 + SIGINT."""
