# Shell functions for dom0's /init and the scenario scripts (sourced by both).
# Every line meant for the host starts with "@@": "@@DOM0" from dom0, "@@G <name>| " before
# each line a guest writes to its console, "@@BE| " before each line of the backend's log.

XT=/opt/xen-test
BACKEND_LOG=/var/log/pvdisplay-backend.log
PLANES_SOCKET=/tmp/pvdisplay-0/planes.sock

say() { echo "@@DOM0 $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
# param NAME: the value of xt.NAME= on the kernel command line (empty when absent).
param() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^xt\.$1=//p" | tail -n 1; }

# A backend must watch XenStore before `xl create`: libxl (4.17) waits for every vdispl
# and vkbd backend to reach InitWait and fails the create after about 25 s otherwise.
start_backend() {
  if [ "$(param backend)" != fake ]; then
    BACKEND_KIND=pvdisplay
    level=$(param loglevel)
    web="--listen 0.0.0.0:8080"
    [ "$(param web)" = off ] && web=--no-web
    # A killed backend leaves its socket behind: the wait below must see the new one.
    rm -f "$PLANES_SOCKET"
    # PYTHONFAULTHANDLER: a crash leaves its Python stack in the log.
    # shellcheck disable=SC2086
    PYTHONFAULTHANDLER=1 pvdisplay --log-level "${level:-info}" backend --hv xen $web \
      > "$BACKEND_LOG" 2>&1 &
    BACKEND_PID=$!
    n=0
    while [ $n -lt 120 ] && [ ! -S "$PLANES_SOCKET" ] && kill -0 $BACKEND_PID 2>/dev/null; do
      sleep 0.5; n=$((n + 1))
    done
    kill -0 $BACKEND_PID 2>/dev/null || say "backend exited early: $(tail -n 5 "$BACKEND_LOG" | tr '\n' ' ')"
  else
    # The stand-in: moves XenBus states only, so that xl create succeeds and the frontends
    # probe; it speaks no protocol (flips complete only by the frontend's own timeout).
    BACKEND_KIND=fake
    fake_backend > "$BACKEND_LOG" 2>&1 &
    BACKEND_PID=$!
  fi
  tail -n +1 -f "$BACKEND_LOG" | sed -u 's/^/@@BE| /' &
  BACKEND_TAIL=$!
  # Scenarios run in subshells: one that restarts the backend leaves the new ids here.
  echo "$BACKEND_PID $BACKEND_TAIL" > /tmp/backend.pids
}

# kill_backend: SIGKILL the backend and wait until it has died (its files closed, the run
# dir's lock released), as a crash would leave things.
kill_backend() {
  kill -KILL "$BACKEND_PID"
  kill "$BACKEND_TAIL" 2>/dev/null
  # A dead child stays a zombie until reaped, and `kill -0` still finds it; one that has
  # closed its descriptors is dead enough.
  n=0
  while [ -n "$(ls "/proc/$BACKEND_PID/fd" 2>/dev/null)" ] && [ $n -lt 300 ]; do
    sleep 0.2; n=$((n + 1))
  done
}

stop_backend() {
  read -r BACKEND_PID BACKEND_TAIL < /tmp/backend.pids
  if [ -n "${BACKEND_PID:-}" ] && ! kill -0 "$BACKEND_PID" 2>/dev/null; then
    # A backend a scenario restarted is not our child: its status is not ours to read.
    wait "$BACKEND_PID" 2>/dev/null && status=$? || status=$?
    [ $status -eq 127 ] && say "backend had exited" || say "backend had exited, status $status"
  fi
  [ -n "${BACKEND_PID:-}" ] && kill "$BACKEND_PID" 2>/dev/null
  sleep 1
  [ -n "${BACKEND_TAIL:-}" ] && kill "$BACKEND_TAIL" 2>/dev/null
  BACKEND_PID=
}

fake_backend() {
  while :; do
    # xl's vkb with backend-type=linux puts its backend under "vinput", not "vkbd".
    for kind in vdispl vinput vkbd; do
      for dom in $(xenstore-list /local/domain/0/backend/$kind 2>/dev/null); do
        for dev in $(xenstore-list /local/domain/0/backend/$kind/$dom 2>/dev/null); do
          be=/local/domain/0/backend/$kind/$dom/$dev
          fe=$(xenstore-read $be/frontend 2>/dev/null)
          state=$(xenstore-read $be/state 2>/dev/null)
          fe_state=$(xenstore-read "$fe/state" 2>/dev/null)
          case "$state/$fe_state" in
            1/*) xenstore-write $be/state 2; echo "fake: $be InitWait" ;;
            2/3) xenstore-write $be/state 4; echo "fake: $be Connected" ;;
            5/* | */5) xenstore-write $be/state 6; echo "fake: $be Closed" ;;
          esac
        done
      done
    done
    sleep 0.5
  done
}

# run_scenario NAME: /opt/xen-test/scenarios/NAME.sh in a subshell, between markers.
run_scenario() {
  script=$XT/scenarios/$1.sh
  if [ ! -f "$script" ]; then say "scenario $1 MISSING"; return; fi
  say "scenario $1 start uptime=$(up)"
  ( set -u; . "$script" )
  say "scenario $1 end rc=$? uptime=$(up)"
}

# create_guest NAME GUEST_SCRIPT [CONFIG_LINE...]: xl create a PV domU booting the rig's
# kernel and domU image; GUEST_SCRIPT (from tools/xen/guest/scenarios) is what its /init
# runs. GUEST_RAMDISK, GUEST_MEMORY and GUEST_EXTRA (kernel parameters) change the
# defaults. Sets DOMID; the guest's console lines reach the host as "@@G NAME| ...".
create_guest() {
  name=$1 script=$2
  shift 2
  cfg=/etc/xen/$name.cfg
  {
    echo "name=\"$name\""
    echo 'type="pv"'
    echo 'kernel="/boot/vmlinuz"'
    echo "ramdisk=\"${GUEST_RAMDISK:-/boot/domu.cpio.gz}\""
    echo "memory=${GUEST_MEMORY:-192}"
    echo 'vcpus=1'
    echo "extra=\"console=hvc0 loglevel=${GUEST_LOGLEVEL:-5} xt.guest=$script ${GUEST_EXTRA:-}\""
    for line in "$@"; do echo "$line"; done
  } > "$cfg"
  log=/var/log/xen/console/guest-$name.log
  : > "$log"
  tail -n +1 -f "$log" | sed -u "s/^/@@G $name| /" &
  a=$(date +%s%N)
  xl create "$cfg" 2>&1 | sed 's/^/@@DOM0 xl: /'
  b=$(date +%s%N)
  DOMID=$(xl domid "$name" 2>/dev/null)
  say "created $name domid=${DOMID:-none} in $(( (b - a) / 1000000 )) ms"
  [ -n "$DOMID" ]
}

# wait_guest NAME REGEX SECONDS: wait until guest NAME's console shows a line matching REGEX.
wait_guest() {
  n=0
  while [ $n -lt $(($3 * 2)) ]; do
    grep -qE "$2" "/var/log/xen/console/guest-$1.log" 2>/dev/null && return 0
    # xl takes most of a second under TCG: ask it whether the guest lives every 5 s only.
    [ $((n % 10)) -ne 9 ] || xl domid "$1" >/dev/null 2>&1 || { say "guest $1 is gone"; return 1; }
    sleep 0.5; n=$((n + 1))
  done
  say "timeout: guest $1 never printed /$2/ in $3 s"
  return 1
}

destroy_guest() {
  a=$(date +%s%N)
  timeout 60 xl destroy "$1" 2>&1 | sed 's/^/@@DOM0 xl: /'
  b=$(date +%s%N)
  say "destroyed $1 in $(( (b - a) / 1000000 )) ms"
  # The console tail ends with its log file's writer.
  pkill -f "tail -n \+1 -f /var/log/xen/console/guest-$1.log"
}

# dump_file LABEL FILE: FILE base64-encoded between markers, with its sha256, for the host.
dump_file() {
  say "file-begin $1 $(sha256sum < "$2" | cut -d' ' -f1) $(wc -c < "$2")"
  base64 -w 76 "$2"
  say "file-end $1"
}

# snapshots_start DOMID COUNT LABEL:CONNECTOR...: COUNT rounds of snapshots of each
# connector in one python3 process (tools/xen/dom0/snapshots.py), in the background: it
# waits for each connector's first frame, so start it before the guest draws (a python3
# start takes longer under TCG than a short flip test lasts). snapshots_finish waits for
# it and dumps every PNG as LABEL-ROUND.
snapshots_start() {
  domid=$1 count=$2
  shift 2
  SNAP_TARGETS="$*"
  PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor python3 -X faulthandler \
    "$XT/lib/snapshots.py" "$PLANES_SOCKET" "$domid" "$count" "$@" > /tmp/snapshots.out 2>&1 &
  SNAP_PID=$!
}

snapshots_finish() {
  wait "$SNAP_PID"
  sed 's/^/@@DOM0 snapshot: /' /tmp/snapshots.out
  for target in $SNAP_TARGETS; do
    for f in /tmp/snap-"${target%%:*}"-*.png; do
      [ -s "$f" ] && { f=${f#/tmp/snap-}; dump_file "${f%.png}" "/tmp/snap-$f"; }
    done
  done
}

# snapshot_start LABEL DOMID CONNECTOR: `pvdisplay snapshot` of the connector in the
# background, tried until the connector shows a frame (the guest may still be booting), for
# at most two minutes. Started beside the guest: on a loaded host the CLI's start in dom0
# can outlast a short flip test, so it must not wait for the guest to flip first.
snapshot_start() {
  out=/tmp/snap-$1.png
  rm -f "$out" /tmp/snap.txt
  (
    deadline=$(( $(date +%s) + 120 ))
    until pvdisplay snapshot --planes-socket "$PLANES_SOCKET" "$2" "$3" -o "$out" > /tmp/snap.txt 2>&1 \
      || [ "$(date +%s)" -ge "$deadline" ]; do
      sleep 1
    done
  ) &
  CLI_SNAP_PID=$!
  CLI_SNAP_LABEL=$1
}

# snapshot_finish: wait for `snapshot_start`'s snapshot and dump it for the host.
snapshot_finish() {
  wait "$CLI_SNAP_PID"
  sed 's/^/@@DOM0 snapshot: /' /tmp/snap.txt
  out=/tmp/snap-$CLI_SNAP_LABEL.png
  [ -s "$out" ] && dump_file "$CLI_SNAP_LABEL" "$out"
}
