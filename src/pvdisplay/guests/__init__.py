"""Guest programs the emulated host runs as domains, over the display and input frontends.

- `demo`: the animated test card `pvdisplay demo` shows, with input drawn back on it.
- `pattern`: a still, seeded pattern per framebuffer, which tests check pixel for pixel.
"""
