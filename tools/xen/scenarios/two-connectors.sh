# Scenario 3: two connectors of different sizes on one vdispl device. The guest's modetest
# drives one connector at a time (flip-each): both connectors' planes show its patterns at
# their own sizes. (One modetest over both makes a single 1824x768 framebuffer spanning
# them; docs/real-xen.md says what Linux then asks of the backend.)
GUEST_EXTRA="xt.seconds=30" create_guest two-conn flip-each \
  "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600;id1:1024x768']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
snapshots_start "$DOMID" 2 two-conn-0:0 two-conn-1:1
wait_guest two-conn '@@GUEST script flip-each done' 400
snapshots_finish
destroy_guest two-conn
