# Scenario 1: frontend-allocated buffers (be-alloc=0), one 800x600 connector, its input,
# and `xl destroy` mid-flip, with one guest (each guest costs half a minute under TCG).
# - Display: the guest's modetest sets the mode and page-flips between its "tiles" and
#   "plain" framebuffers; dom0 snapshots the connector while it flips (the host compares
#   the pixels), `pvdisplay snapshot` included.
# - Input (xen-kbdfront): the guest records its /dev/input/event* devices; dom0 sends a key
#   press and release and a pointer move through the planes socket (what the web viewer
#   and VNC do), and the guest reports the events its kernel delivered.
#   feature-abs-pointer: the pointer reports positions (ABS_X/ABS_Y), as a web page's does.
# - Destroy: while modetest still flips, `xl destroy`. Afterwards the backend must hold no
#   grant mapping (gntdev) and no event channel (evtchn) of the dead domain, and Xen must
#   free the domain (a mapping left behind keeps it as a nameless zombie in `xl list`).
read -r backend _ < /tmp/backend.pids
count() {  # gntdev/gntalloc mappings of the backend, its event channel interrupts
  maps=$(grep -cE '/dev/xen/gnt(dev|alloc)' "/proc/$backend/maps" 2>/dev/null)
  ports=$(grep -c 'evtchn:' /proc/interrupts)
  echo "maps=${maps:-0} ports=$ports"
}
say "resources before: $(count)"
# modetest flips for up to 5 minutes: the destroy below comes while it still does.
GUEST_EXTRA="xt.seconds=300" create_guest fe-alloc flip-input \
  "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux,feature-abs-pointer=1']" || return 1
snapshots_start "$DOMID" 4 fe-alloc:0
# `pvdisplay snapshot` once too, the first time the connector shows a frame.
snapshot_start fe-alloc-cli "$DOMID" 0
wait_guest fe-alloc 'modetest: freq:' 300 || { destroy_guest fe-alloc; return 1; }
# The backend's CPU per flip while modetest flips (a figure for the log, not a check).
PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor python3 "$XT/lib/flip_cost.py" \
  "$PLANES_SOCKET" "$backend" "$DOMID" 10 2>&1 | sed 's/^/@@DOM0 flip cost: /'
snapshot_finish
snapshots_finish
say "frontend nodes:"; xenstore-ls -f "/local/domain/$DOMID/device/vdispl" | sed 's/^/@@DOM0 xs: /'
wait_guest fe-alloc '@@GUEST input listening' 120 || { destroy_guest fe-alloc; return 1; }
say "vinput backend nodes:"
xenstore-ls -f "/local/domain/0/backend/vinput/$DOMID" 2>&1 | sed 's/^/@@DOM0 xs: /'
# KEY_A (30) down and up, then the pointer to (123, 45) of the 800x600 connector.
PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor python3 "$XT/lib/inject.py" "$PLANES_SOCKET" "$DOMID" 0 \
  key:30:1 key:30:0 pointer:123:45 2>&1 | sed 's/^/@@DOM0 inject: /'
wait_guest fe-alloc '@@GUEST input done' 120
say "resources flipping: $(count)"
if grep -q '@@GUEST modetest done' /var/log/xen/console/guest-fe-alloc.log; then
  say "destroyed after modetest ended"
else
  say "destroyed while modetest flips"
fi
destroy_guest fe-alloc
sleep 5
say "resources after: $(count)"
say "domains after: $(xl list | tail -n +2 | awk '{print $1 "/" $2}' | tr '\n' ' ')"
say "backend nodes after: $(xenstore-list /local/domain/0/backend/vdispl 2>/dev/null | tr '\n' ' ')"
