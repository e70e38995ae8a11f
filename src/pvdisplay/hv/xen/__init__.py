"""`pvdisplay.hv` on real Xen, over Linux's /dev/xen/{gntalloc,gntdev,evtchn} devices.

- `abi`: the devices' ioctl numbers and argument structs (sans-IO, proven against the
  compiled headers by tests/hv/test_hv_xen_layout.py).
- `events.XenEventChannels`: /dev/xen/evtchn.
- `grants.XenGrantTable`, `grants.XenGuestMemory`: gntalloc for own pages, gntdev for
  other domains'.
- `buffers.XenBuffers`: buffer handles over gntdev and gntalloc descriptors, sent as
  `pvdisplay.ipc.SharedBuffer`s.
- `hypervisor.open_hypervisor()`: all of it for this domain.

docs/hypervisor.md ("Real Xen") says what differs from the emulation.
"""

from pvdisplay.hv.xen.hypervisor import (
    XenHypervisor,
    is_control_domain,
    open_hypervisor,
    own_domid,
)

__all__ = ["XenHypervisor", "is_control_domain", "open_hypervisor", "own_domid"]
