# Scenario 4: input through xen-kbdfront. The guest records its /dev/input/event* devices;
# dom0 sends a key press and release and a pointer move through the planes socket (what
# the web viewer and VNC do), and the guest reports the events its kernel delivered.
# feature-abs-pointer: the pointer reports positions (ABS_X/ABS_Y), as a web page's does.
create_guest input input "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux,feature-abs-pointer=1']" || return 1
wait_guest input '@@GUEST input listening' 300 || return 1
say "vinput backend nodes:"
xenstore-ls -f "/local/domain/0/backend/vinput/$DOMID" 2>&1 | sed 's/^/@@DOM0 xs: /'
# KEY_A (30) down and up, then the pointer to (123, 45) of the 800x600 connector.
PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor python3 "$XT/lib/inject.py" "$PLANES_SOCKET" "$DOMID" 0 \
  key:30:1 key:30:0 pointer:123:45 2>&1 | sed 's/^/@@DOM0 inject: /'
wait_guest input '@@GUEST input done' 120
destroy_guest input
