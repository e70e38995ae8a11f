"""Map grant refs that a guest never granted, through hv.xen, as the backend maps a guest's.

Usage: bad_refs.py DOMID. Each case must fail with a `HypervisorError` carrying an errno
(what the backend answers the guest), not succeed and not take the process down; one line
each: "CASE: ERRNO_NAME" or "CASE: MAPPED" (a failure of the check).
"""

import errno
import sys

from pvdisplay.hv import HypervisorError, xen

NEVER_GRANTED = 3000
"""A ref inside the guest's grant table (32 frames: 16384 refs) that nothing grants."""
PAST_THE_TABLE = 1 << 30


def main() -> None:
    domid = int(sys.argv[1])
    hv = xen.open_hypervisor(0)
    cases = {
        "never granted": (domid, [NEVER_GRANTED]),
        "past the table": (domid, [PAST_THE_TABLE]),
        "no such domain": (domid + 1000, [NEVER_GRANTED]),
    }
    try:
        for name, (granter, refs) in cases.items():
            try:
                hv.grants.map(granter, refs).close()
            except HypervisorError as error:
                print(f"{name}: {errno.errorcode.get(error.errno or 0, error.errno)}")
            else:
                print(f"{name}: MAPPED")
    finally:
        hv.close()


if __name__ == "__main__":
    main()
