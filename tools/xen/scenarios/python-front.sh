# Scenario: pvdisplay's own frontends (pvdisplay.display.front, pvdisplay.input.front) in a
# PV domU over hv.xen: gntalloc grants, evtchn, XenStore through /dev/xen/xenbus. The
# guest boots the Python image (python3, numpy, pvdisplay's source) and leaves its vdispl
# and vkbd to Python: drm_xen_front is not loaded and the built-in xen-kbdfront's init is
# blacklisted. It times PG_FLIP round trips, then shows guests.pattern's picture; dom0
# snapshots it (the host compares it pixel for pixel) and sends a key and a pointer move,
# which the guest reports as its input frontend receives them. The vkb's width and height
# are the connector's (xl's default is 800x600): positions then arrive as sent.
GUEST_RAMDISK=/boot/domu-python.cpio GUEST_MEMORY=384 \
  GUEST_EXTRA="xt.skip=drm_xen_front initcall_blacklist=xenkbd_init" \
  create_guest python-front python-front "vdispl=['backend=0,be-alloc=0,connectors=id0:320x240']" \
  "vkb=['backend=0,backend-type=linux,feature-abs-pointer=1,width=320,height=240']" || return 1
wait_guest python-front '@@GUEST (display connected|python front exited)' 600 ||
  { destroy_guest python-front; return 1; }
# The backend's CPU per flip while the guest times its round trips (a figure, not a check).
read -r backend _ < /tmp/backend.pids
PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor python3 "$XT/lib/flip_cost.py" \
  "$PLANES_SOCKET" "$backend" "$DOMID" 5 2>&1 | sed 's/^/@@DOM0 python flip cost: /'
wait_guest python-front '@@GUEST (pattern shown|python front exited)' 300 ||
  { destroy_guest python-front; return 1; }
# One snapshot: the pattern's noise compresses badly, and the serial console is slow.
snapshots_start "$DOMID" 1 python-front:0
snapshots_finish
# Refs this guest never granted, mapped through hv.xen as the backend maps a guest's.
PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor python3 "$XT/lib/bad_refs.py" "$DOMID" 2>&1 |
  sed 's/^/@@DOM0 bad refs: /'
if ! wait_guest python-front '@@GUEST (keyboard connected|python front exited)' 120; then
  xenstore-ls -f "/local/domain/$DOMID/device/vkbd" 2>&1 | sed 's/^/@@DOM0 xs: /'
  destroy_guest python-front
  return 1
fi
# KEY_A (30) down and up, then the pointer to (123, 45) of the 320x240 connector.
PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor python3 "$XT/lib/inject.py" "$PLANES_SOCKET" "$DOMID" 0 \
  key:30:1 key:30:0 pointer:123:45 2>&1 | sed 's/^/@@DOM0 inject: /'
wait_guest python-front '@@GUEST input Position' 120
destroy_guest python-front
