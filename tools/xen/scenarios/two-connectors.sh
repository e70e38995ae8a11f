# Scenario 3: two connectors of different sizes on one vdispl device; modetest flips both.
create_guest two-conn flip "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600;id1:1024x768']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest two-conn '@@GUEST modetest -s' 300 || return 1
sleep 5
for i in 1 2; do
  snapshot "two-conn-0-$i" "$DOMID" 0
  snapshot "two-conn-1-$i" "$DOMID" 1
  sleep 1
done
wait_guest two-conn '@@GUEST script flip done' 120
destroy_guest two-conn
