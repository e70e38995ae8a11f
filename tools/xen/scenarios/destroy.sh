# Scenario 5: `xl destroy` while the guest flips. Afterwards the backend must hold no grant
# mapping (gntdev) and no event channel (evtchn) of the dead domain, and Xen must free the
# domain (a mapping left behind keeps it as a nameless zombie in `xl list`).
count() {  # gntdev/gntalloc mappings of the backend, its event channel interrupts
  maps=$(grep -cE '/dev/xen/gnt(dev|alloc)' "/proc/$BACKEND_PID/maps" 2>/dev/null)
  ports=$(grep -c 'evtchn:' /proc/interrupts)
  echo "maps=${maps:-0} ports=$ports"
}
say "resources before: $(count)"
create_guest destroy flip "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest destroy '@@GUEST modetest -s' 300 || return 1
sleep 5
say "resources flipping: $(count)"
destroy_guest destroy
sleep 5
say "resources after: $(count)"
say "domains after: $(xl list | tail -n +2 | awk '{print $1 "/" $2}' | tr '\n' ' ')"
say "backend nodes after: $(xenstore-list /local/domain/0/backend/vdispl 2>/dev/null | tr '\n' ' ')"
