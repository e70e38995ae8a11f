# Scenario: the backend is killed (SIGKILL) and started again while Linux's xen-drm-front
# is connected and modetest flips. The killed backend's mappings and ports go with its
# process; XenStore still says Connected. The new backend finds the device and writes
# InitWait; Linux 6.1 takes that as "the backend restarted": it unplugs its DRM device
# (modetest's flips fail from then on), frees its rings, goes Initialising, publishes new
# ones and connects again, with a new DRM device. The guest runs modetest run after run
# (guest script flip-again), so a run on the new device shows whether the new backend
# serves it; dom0 snapshots before the kill and after the restart. Then the host's browser
# checks the new backend's web viewer.
GUEST_EXTRA="xt.seconds=20" create_guest restart flip-again "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
console=/var/log/xen/console/guest-restart.log
wait_guest restart 'modetest: freq:' 300 || return 1
snapshots_start "$DOMID" 1 restart-before:0
snapshots_finish
fe=/local/domain/$DOMID/device/vdispl/0
say "before the kill: frontend state $(xenstore-read $fe/state) evt-ring-ref $(xenstore-read $fe/0/evt-ring-ref)"
kill_backend
say "backend killed uptime=$(up)"
# Flips now wait for an answer that never comes: Linux completes each after its timeout.
sleep 5
mark=$(wc -l < "$console")
start_backend
say "backend restarted uptime=$(up)"
# A modetest run that started after the restart and flips: the console file may still
# receive the old run's lines after `mark`, so a rate alone proves nothing.
flipping_again() {
  tail -n +"$mark" "$console" | awk '/@@GUEST flip run/ {run = 1} run && /modetest: freq:/ {found = 1} END {exit !found}'
}
n=0
until flipping_again; do
  n=$((n + 1))
  if [ $n -gt 600 ]; then say "timeout: no flips after the restart"; break; fi
  sleep 0.5
done
say "after the restart: frontend state $(xenstore-read $fe/state) evt-ring-ref $(xenstore-read $fe/0/evt-ring-ref)"
say "guest after the restart: $(tail -n +"$mark" "$console" | grep -E '@@GUEST (flip run|card)' | tr '\n' ' ')"
snapshots_start "$DOMID" 1 restart-after:0
snapshots_finish
# The web viewer in dom0 (the restarted backend's), reached from the host through QEMU's
# host forward while this guest flips: dom0 says "web ready" and waits (up to 300 s) for
# the host to type a line on the console once its browser is done.
say "web ready domid=$DOMID port=8080"
timeout 300 head -n 1 < /dev/hvc0 > /tmp/web-reply
say "web reply: $(cat /tmp/web-reply)"
destroy_guest restart
