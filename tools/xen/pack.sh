#!/bin/sh
# Pack what tools/xen/fetch.sh unpacked, plus this working tree, into the two images the rig
# boots: CACHE_DIR/out/dom0.cpio (dom0's initramfs) and, inside it, /boot/domu.cpio.gz (the
# initramfs of every domU). Takes seconds: dom0's root is a cached uncompressed cpio
# (dom0-base.cpio, rebuilt only when fetch.sh rebuilt the tree), and everything that changes
# with the source (the rig's scripts, pvdisplay's source, the domU image) goes into a small
# second archive appended to it. The kernel unpacks concatenated newc archives in order,
# later files replacing earlier ones.
# XEN_RIG_SRC=DIR packs DIR/pvdisplay instead of this tree's src/pvdisplay (to try a change
# on real Xen without touching the tree).
# Usage: pack.sh CACHE_DIR. Runs beside another pack.sh of the same cache (each stages in
# directories of its own and renames its results into place); rig.py serialises fetch.sh.
set -eu
CACHE=$(cd "${1:?usage: pack.sh CACHE_DIR}" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RELEASE=$(cat "$CACHE/release")
MODULES=$CACHE/modules/usr/lib/modules/$RELEASE
[ -d "$MODULES" ] || MODULES=$CACHE/modules/lib/modules/$RELEASE
OUT=$CACHE/out
mkdir -p "$OUT"

# Kernel modules each side loads, named as modprobe names them; their dependencies are
# added from modules.dep. dom0: the Xen user-space devices and e1000 (QEMU's NIC, for the
# web viewer's host forwarding). domU: the PV display frontend and evdev (xen-kbdfront
# itself is built in), and the Xen user-space devices pvdisplay's own frontends use.
DOM0_MODULES="xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd e1000"
DOMU_MODULES="drm drm_kms_helper xen-front-pgdir-shbuf drm_xen_front evdev xen-evtchn xen-gntdev xen-gntalloc"

# modules_in_order NAME...: relative .ko paths, each after everything it needs.
modules_in_order() {
  for name in "$@"; do
    line=$(grep -E "(^|/)$name\.ko(\.[gx]z)?:" "$MODULES/modules.dep") ||
      { echo "pack.sh: no module $name in $RELEASE" >&2; exit 1; }
    # modules.dep lists a module's dependencies so that the last one loads first.
    # shellcheck disable=SC2086
    for dep in $(echo ${line#*:} | tr ' ' '\n' | tac) "${line%%:*}"; do echo "$dep"; done
  done | awk '!seen[$0]++'
}

# newc ROOT: an uncompressed newc archive of ROOT on stdout, owned by root.
newc() { (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet); }

# dom0's base: the mmdebstrap tree plus its modules (under usr/lib: /lib is a symlink in a
# merged-/usr root, and an archive entry "lib" as a directory would replace it).
BASE=$CACHE/dom0-base.cpio
if [ ! -s "$BASE" ] || [ "$CACHE/dom0root.stamp" -nt "$BASE" ] || [ "$HERE/pack.sh" -nt "$BASE" ]; then
  STAGE=$(mktemp -d "$CACHE/stage-dom0mods.XXXXXX")
  for ko in $(modules_in_order $DOM0_MODULES); do
    mkdir -p "$STAGE/usr/lib/modules/$RELEASE/$(dirname "$ko")"
    cp "$MODULES/$ko" "$STAGE/usr/lib/modules/$RELEASE/$ko"
  done
  cp "$MODULES"/modules.builtin* "$MODULES/modules.order" "$STAGE/usr/lib/modules/$RELEASE/"
  R=$CACHE/dom0root
  "$R/lib64/ld-linux-x86-64.so.2" --library-path "$R/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu" \
    --argv0 depmod "$R/bin/kmod" -b "$STAGE/usr" "$RELEASE"
  { newc "$R" ; newc "$STAGE"; } > "$BASE.tmp.$$"
  mv "$BASE.tmp.$$" "$BASE"
  rm -rf "$STAGE"
fi

# The domU image: busybox, modetest, the modules in load order, the guest's scripts. The
# Python domU's image is the same plus Python and pvdisplay's source (below).
DOMU=$(mktemp -d "$CACHE/stage-domu.XXXXXX")
cp -a "$CACHE/domu/." "$DOMU"
mkdir -p "$DOMU/proc" "$DOMU/sys" "$DOMU/dev" "$DOMU/tmp" "$DOMU/modules"
ln -s busybox "$DOMU/bin/sh"
for ko in $(modules_in_order $DOMU_MODULES); do
  cp "$MODULES/$ko" "$DOMU/modules/"
  basename "$ko" >> "$DOMU/modules/order"
done
cp "$HERE/guest/init" "$DOMU/init"
mkdir -p "$DOMU/scenarios"
cp "$HERE"/guest/scenarios/* "$DOMU/scenarios/" 2>/dev/null || true
chmod +x "$DOMU/init" "$DOMU"/scenarios/* 2>/dev/null || true

# The Python domU's runtime (python_domu.py: python3.11, numpy and their libraries from
# dom0's root), archived once; every run puts it after the domU image above with
# pvdisplay's source. Left uncompressed: xl's domain builder unzips a gzipped
# ramdisk itself (one gzip member only), and under TCG unzipping these 100 MB in xl and
# again in the guest's kernel took a minute longer than copying them.
PYBASE=$CACHE/domu-python-base.cpio
if [ ! -s "$PYBASE" ] || [ "$CACHE/dom0root.stamp" -nt "$PYBASE" ] || [ "$HERE/python_domu.py" -nt "$PYBASE" ]; then
  STAGE=$(mktemp -d "$CACHE/stage-python.XXXXXX")
  rmdir "$STAGE"
  python3 "$HERE/python_domu.py" "$CACHE/dom0root" "$STAGE"
  newc "$STAGE" > "$PYBASE.tmp.$$"
  mv "$PYBASE.tmp.$$" "$PYBASE"
  rm -rf "$STAGE"
fi

# The overlay: dom0's /init and scenario scripts, the kernel and domU image for xl, and
# pvdisplay's source from this working tree (bytecode left out: dom0's python3 writes its own).
OVERLAY=$(mktemp -d "$CACHE/stage-overlay.XXXXXX")
chmod 755 "$DOMU" "$OVERLAY"
mkdir -p "$OVERLAY/boot" "$OVERLAY/opt/xen-test" "$OVERLAY/opt/pvdisplay/src" "$OVERLAY/usr/local/bin"
cp "$CACHE/vmlinuz" "$OVERLAY/boot/vmlinuz"
newc "$DOMU" | gzip -1 > "$OVERLAY/boot/domu.cpio.gz"
mkdir -p "$DOMU/opt/pvdisplay/src"
(cd "${XEN_RIG_SRC:-$REPO/src}" && find pvdisplay -name __pycache__ -prune -o -print | cpio -pdm --quiet "$DOMU/opt/pvdisplay/src")
# The runtime last: where both have a library (libc, the loader), Python's matches the
# rest of Python's.
{ newc "$DOMU"; cat "$PYBASE"; } > "$OVERLAY/boot/domu-python.cpio"
cp "$HERE/dom0/init" "$OVERLAY/init"
cp -r "$HERE/dom0" "$OVERLAY/opt/xen-test/lib"
cp -r "$HERE/scenarios" "$OVERLAY/opt/xen-test/scenarios"
(cd "${XEN_RIG_SRC:-$REPO/src}" && find pvdisplay -name __pycache__ -prune -o -print | cpio -pdm --quiet "$OVERLAY/opt/pvdisplay/src")
# simplejpeg has no Debian package, and pvdisplay's CLI imports it (through the web viewer)
# at load time: the one dependency taken from the project's venv (a CPython 3.11 manylinux
# wheel, as dom0's python3 is 3.11), when there is one.
mkdir -p "$OVERLAY/opt/pvdisplay/vendor"
for found in "$REPO"/.venv/lib/python3.11/site-packages/simplejpeg; do
  [ -d "$found" ] && cp -r "$found" "$OVERLAY/opt/pvdisplay/vendor/"
done
cat > "$OVERLAY/usr/local/bin/pvdisplay" <<'WRAPPER'
#!/bin/sh
# pvdisplay from the source the rig copied in (no install step, no venv).
export PYTHONPATH=/opt/pvdisplay/src:/opt/pvdisplay/vendor
exec python3 -c 'import sys; from pvdisplay.cli import main; sys.argv[0] = "pvdisplay"; main()' "$@"
WRAPPER
chmod +x "$OVERLAY/init" "$OVERLAY/usr/local/bin/pvdisplay" "$OVERLAY"/opt/xen-test/scenarios/* "$OVERLAY"/opt/xen-test/lib/*
{ cat "$BASE"; newc "$OVERLAY"; } > "$OUT/dom0.cpio.tmp.$$"
mv "$OUT/dom0.cpio.tmp.$$" "$OUT/dom0.cpio"
rm -rf "$DOMU" "$OVERLAY"
