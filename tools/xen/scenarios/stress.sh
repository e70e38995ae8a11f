# Not a test of pvdisplay: a health check of the emulated machine. While a guest flips,
# dom0 starts python3 ten times and the guest lists its connectors ten times (in its
# flip script); every start that crashes is counted.
create_guest stress flip "vdispl=['backend=0,be-alloc=0,connectors=id0:800x600']" \
  "vkb=['backend=0,backend-type=linux']" || return 1
wait_guest stress '@@GUEST modetest -s' 300 || return 1
crashed=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  python3 -c 'import enum, re, pathlib, json, asyncio, numpy' || crashed=$((crashed + 1))
done
say "stress: python3 crashed $crashed of 10"
wait_guest stress '@@GUEST script flip done' 120
destroy_guest stress
