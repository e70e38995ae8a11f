# Scenario 6: the web viewer in dom0, reached from the host through QEMU's host forward.
# A guest flips; dom0 says "web ready" and waits (up to 300 s) for the host to type a line
# on the console once its browser is done.
GUEST_EXTRA="xt.seconds=600" create_guest web flip "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest web '@@GUEST modetest -s' 300 || return 1
sleep 3
say "web ready domid=$DOMID port=8080"
timeout 300 head -n 1 < /dev/hvc0 > /tmp/web-reply
say "web reply: $(cat /tmp/web-reply)"
destroy_guest web
