"""Outputs: the ways people see and touch guest displays (VNC, web viewer, window, PNG).

Each output is a local client of the display backend's planes socket. The live ones read
planes and send input back through `feed.PlaneFeed` (built on
`pvdisplay.planes.aio.AsyncPlaneClient`) and keep only their protocol and UI; `snapshot`
asks once, with the blocking `pvdisplay.planes.client.PlaneClient`.
"""
