"""The web viewer: every guest display in a browser, with keyboard, mouse and touch.

`server` is the aiohttp adapter; `tiles`, `session`, `browser_input` and `keys` are the
sans-IO core (what changed, how to encode it, when to send, what the page's input means).
"""
