# Scenario 3: two connectors of different sizes on one vdispl device; modetest flips both.
create_guest two-conn flip "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600;id1:1024x768']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest two-conn '@@GUEST modetest -s' 300 || return 1
snapshots "$DOMID" 2 two-conn-0:0 two-conn-1:1
wait_guest two-conn '@@GUEST script flip done' 120
destroy_guest two-conn
