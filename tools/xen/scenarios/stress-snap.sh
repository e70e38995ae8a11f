# Not a test of pvdisplay's output: a health check of dom0 while a guest flips. Phase A:
# five python3 starts that only import; phase B: five that each take a snapshot (mapping
# the guest's pages through gntdev). Crashes are counted per phase, snapshots dumped.
GUEST_EXTRA="xt.seconds=400" create_guest stress-snap flip \
  "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest stress-snap '@@GUEST modetest -s' 300 || return 1
export PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor
crashed=0
for i in 1 2 3 4 5; do
  python3 -c 'import enum, re, pathlib, json, asyncio, numpy, PIL.Image; import pvdisplay.planes.client' \
    || crashed=$((crashed + 1))
done
say "stress-snap: phase A (imports) crashed $crashed of 5"
crashed=0
for i in 1 2 3 4 5; do
  python3 "$XT/lib/snapshots.py" "$PLANES_SOCKET" "$DOMID" 2 "stress-$i:0" || crashed=$((crashed + 1))
done
say "stress-snap: phase B (snapshots) crashed $crashed of 5"
for f in /tmp/snap-stress-*.png; do g=${f#/tmp/snap-}; dump_file "${g%.png}" "$f"; done
destroy_guest stress-snap
