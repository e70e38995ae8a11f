# Scenario 1: frontend-allocated buffers (be-alloc=0), one 800x600 connector. The guest's
# modetest sets the mode and page-flips between its "tiles" and "plain" framebuffers; dom0
# snapshots the connector while it flips (the host compares the pixels).
create_guest fe-alloc flip "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest fe-alloc '@@GUEST modetest -s' 300 || return 1
sleep 5
for i in 1 2 3; do snapshot "fe-alloc-$i" "$DOMID" 0; sleep 1; done
say "frontend nodes:"; xenstore-ls -f "/local/domain/$DOMID/device/vdispl" | sed 's/^/@@DOM0 xs: /'
wait_guest fe-alloc '@@GUEST script flip done' 120
destroy_guest fe-alloc
