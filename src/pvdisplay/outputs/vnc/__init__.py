"""A VNC (RFB 3.3/3.7/3.8) server for guest displays, written from RFC 6143.

Sans-IO core: `rfb` (handshake and client messages), `pixels`, `zrle`, `damage`,
`updates` (framebuffer updates), `keysyms` and `pointer` (input), `des` (VNC
authentication). The asyncio adapter is `server` (`VncServer`, `serve`).
"""
