# Scenario 1: frontend-allocated buffers (be-alloc=0), one 800x600 connector. The guest's
# modetest sets the mode and page-flips between its "tiles" and "plain" framebuffers; dom0
# snapshots the connector while it flips (the host compares the pixels). It flips for 90 s:
# on a loaded host, `pvdisplay snapshot` in dom0 takes tens of seconds to start each try.
GUEST_EXTRA="xt.seconds=90" create_guest fe-alloc flip "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
snapshots_start "$DOMID" 4 fe-alloc:0
# `pvdisplay snapshot` once too, the first time the connector shows a frame.
snapshot_start fe-alloc-cli "$DOMID" 0
wait_guest fe-alloc 'modetest: freq:' 300 || return 1
# The backend's CPU per flip while modetest flips (a figure for the log, not a check).
PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor python3 "$XT/lib/flip_cost.py" \
  "$PLANES_SOCKET" "$BACKEND_PID" "$DOMID" 10 2>&1 | sed 's/^/@@DOM0 flip cost: /'
snapshot_finish
snapshots_finish
say "frontend nodes:"; xenstore-ls -f "/local/domain/$DOMID/device/vdispl" | sed 's/^/@@DOM0 xs: /'
wait_guest fe-alloc '@@GUEST script flip done' 120
destroy_guest fe-alloc
