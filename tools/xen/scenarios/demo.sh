# `make demo-xen`: one guest running modetest's flip test for a day; the host prints the
# web viewer's address. dom0 then stays up (xt.stay) until the host stops QEMU.
GUEST_EXTRA="xt.seconds=86400" create_guest demo flip "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest demo '@@GUEST modetest -s' 300 || return 1
say "demo ready domid=$DOMID"
# The backend and its web viewer stay up until the host stops QEMU.
while :; do sleep 3600; done
