"""Passing pages between local processes: framed messages with descriptors, shared memory.

Below `hv`, so every process (a domain, the broker, an output) can send, receive and map
buffers without knowing which hypervisor the pages came from.

- `framing`: JSON messages plus descriptors, split into SOCK_SEQPACKET records (sans-IO).
- `sockets`: sending and receiving those messages on a blocking socket.
- `memory`: memfds and mapping runs of fd pages into one contiguous range.
- `buffers`: `SharedBuffer`, the zero-copy buffer handle any local process can map.
"""
