"""virtio-gpu served outside the VMM: a vhost-user backend's device model.

QEMU keeps the virtio transport (virtio-mmio or PCI) and hands the guest's memory and
virtqueues to this process over vhost-user. The layers, each sans-IO:

- `memory`: the guest's RAM as QEMU shared it (SET_MEM_TABLE regions), addressed by guest
  physical address, with every access bounds-checked;
- `virtqueue`: split virtqueues over that memory: descriptor chains (direct and
  indirect), used-ring completion and notification suppression (EVENT_IDX);
- `gpu_wire` and `gpu`: the virtio-gpu 2D command set and the device model that answers
  it, publishing every scanout to a `pvdisplay.planes.model.PlaneRegistry`.

Everything the guest writes is untrusted: a bad address, length or index fails that one
request with `VirtioError` (or a VIRTIO_GPU_RESP_ERR_* answer), never the process.
"""

import errno as _errno

from pvdisplay.wire.errors import ProtocolError


class VirtioError(ProtocolError):
    """Guest-supplied virtio data that cannot be honoured (bad address, chain, ring)."""

    def __init__(self, message: str, errno: int = _errno.EFAULT) -> None:
        super().__init__(errno, message)
