# Scenario 2: backend-allocated buffers (be-alloc=1): the backend grants the pages and the
# frontend maps them. Same modetest run and snapshots as fe-alloc.
GUEST_EXTRA="xt.seconds=25" create_guest be-alloc flip "vdispl=['backend=0,be-alloc=1,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest be-alloc '@@GUEST modetest -s' 300 || return 1
# On a PV guest modetest's first write to the backend's pages faults (docs/real-xen.md):
# snapshots only once it flips.
wait_guest be-alloc 'modetest: freq:|Bus error' 120 || return 1
if grep -q 'Bus error' /var/log/xen/console/guest-be-alloc.log; then
  say "be-alloc: modetest faulted on the backend's pages"
else
  snapshots_start "$DOMID" 3 be-alloc:0
  snapshots_finish
fi
wait_guest be-alloc '@@GUEST script flip done' 120
destroy_guest be-alloc
