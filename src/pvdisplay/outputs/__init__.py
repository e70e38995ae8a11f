"""Outputs: the ways people see and touch guest displays (VNC, web viewer, window).

Each output is a local client of the display backend's planes socket: it reads planes
with `pvdisplay.planes.client.PlaneClient` and sends input back through the same socket.
"""
