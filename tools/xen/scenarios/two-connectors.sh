# Scenario 3: two connectors of different sizes on one vdispl device. The guest's modetest
# drives one connector at a time (flip-each): both connectors' planes show its patterns at
# their own sizes. (One modetest over both makes a single 1824x768 framebuffer spanning
# them; docs/real-xen.md says what Linux then asks of the backend.)
GUEST_EXTRA="xt.seconds=20" create_guest two-conn flip-each \
  "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600;id1:1024x768']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest two-conn '@@GUEST modetest -s [0-9]+:800x600' 300 || return 1
snapshots "$DOMID" 2 two-conn-0:0
wait_guest two-conn '@@GUEST modetest -s [0-9]+:1024x768' 300 || return 1
snapshots "$DOMID" 2 two-conn-1:1
wait_guest two-conn '@@GUEST script flip-each done' 120
destroy_guest two-conn
