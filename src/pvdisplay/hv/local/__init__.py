"""`pvdisplay.hv` emulated on one Linux host: domains are processes, memory is memfds.

- `launcher.DomainLauncher` starts the broker and domain processes.
- `broker` serves each domain's socket; `tables` is its sans-IO state.
- `client.LocalHypervisor` is what a domain's code gets.

Buffer handles are `pvdisplay.ipc.buffers.SharedBuffer`s, which any process can receive
and map without knowing this emulation.
"""
