#!/bin/sh
# Fetch and unpack everything the real-Xen rig boots, with apt only and without installing
# anything on this machine (beyond mmdebstrap and cpio, which the caller checks for):
#   qemu/      QEMU 10 from bookworm-backports plus whichever of its libraries this host
#              lacks (Debian 12's own QEMU 7.2 works too, but 10 is what tools/guest uses,
#              so both rigs share one known-good QEMU version)
#   xen        Xen 4.17 (xen-hypervisor-4.17-amd64), gunzipped: a multiboot image that
#              QEMU's -kernel takes directly
#   vmlinuz    Debian's 6.1 amd64 kernel, both for dom0 and for the domUs
#   modules/   its modules, depmod'ed (the .deb ships no modules.dep); Debian builds the
#              PV display frontend in tree (CONFIG_DRM_XEN_FRONTEND=m)
#   dom0root/  the dom0 root: mmdebstrap essential + the Xen toolstack + python3 with
#              pvdisplay's dependencies from Debian packages
#   domu/      the domU's userland: busybox-static, libdrm's modetest with its loader and
#              the libraries it links
# Usage: fetch.sh CACHE_DIR. Idempotent: each piece has a stamp file holding its CONTENT
# string; a rerun skips every piece whose stamp matches (bump a CONTENT to refetch it).
set -eu
CACHE=${1:?usage: fetch.sh CACHE_DIR}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
cd "$CACHE"

# dom0's packages. libatomic1: pvdisplay's ring indices load it through ctypes.
# python3-pygame: pvdisplay's CLI imports its window viewer at load time. simplejpeg (the
# web viewer's JPEG encoder, also imported at load time) has no Debian package: pack.sh
# copies it from the project's venv.
DOM0_PACKAGES="xen-utils-4.17 xenstore-utils kmod mount busybox iproute2 procps libatomic1
  python3 python3-numpy python3-pil python3-aiohttp python3-click python3-pygame"

done_() { [ "$(cat "$CACHE/$1.stamp" 2>/dev/null)" = "$2" ]; }
mark() { echo "$2" > "$CACHE/$1.stamp"; }

# A private apt state (lists, archives) under the cache: nothing of the host's apt changes.
APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
URI=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$URI" ] || URI=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list)
printf 'deb %s bookworm main\ndeb %s bookworm-backports main\n' "$URI" "$URI" > "$APT/sources.list"
case $APT in *[[:space:]]*) echo "fetch.sh: $APT: no spaces, please" >&2; exit 1 ;; esac
APT_OPTIONS="-o Dir::Etc::SourceList=$APT/sources.list -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists=$APT/lists -o Dir::Cache=$APT/cache -o APT::Architectures::=amd64
  -o APT::Sandbox::User=root -o Debug::NoLocking=1"
# shellcheck disable=SC2086  # APT_OPTIONS is meant to split
apt_() { command="$1"; shift; $command $APT_OPTIONS "$@"; }
updated=
update() { [ -n "$updated" ] || apt_ apt-get -qq update; updated=1; }
download() {  # download DIR PACKAGE...: the .debs themselves, not their dependencies
  dir=$1; shift
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && apt_ apt-get -qq download "$@")
}

C=qemu10-1
if ! done_ qemu "$C"; then
  update
  # Resolving against the host's own dpkg status fetches exactly the libraries it lacks.
  rm -f "$APT"/cache/archives/*.deb
  apt_ apt-get -qq -y --download-only --no-install-recommends -t bookworm-backports \
    install qemu-system-x86
  rm -rf qemu
  for deb in "$APT"/cache/archives/*.deb; do dpkg-deb -x "$deb" qemu; done
  rm -f "$APT"/cache/archives/*.deb
  mark qemu "$C"
fi

C="dom0root-1 $DOM0_PACKAGES"
if ! done_ dom0root "$C"; then
  rm -rf dom0root
  # shellcheck disable=SC2086  # the package list is meant to split
  mmdebstrap --quiet --mode=root --variant=essential \
    --include="$(echo $DOM0_PACKAGES | tr ' ' ',')" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm dom0root "deb $URI bookworm main"
  rm -rf dom0root/var/cache/apt/* dom0root/var/lib/apt/lists/*
  rm -f dom0-base.cpio  # pack.sh rebuilds it from the new tree
  mark dom0root "$C"
fi

C=xen-kernel-1
if ! done_ xen-kernel "$C"; then
  update
  KIMAGE=$(apt_ apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  download debs xen-hypervisor-4.17-amd64 "$KIMAGE"
  rm -rf unpacked modules
  for deb in debs/*.deb; do dpkg-deb -x "$deb" unpacked; done
  zcat unpacked/boot/xen-4.17-amd64.gz > xen
  cp unpacked/boot/vmlinuz-"${KIMAGE#linux-image-}" vmlinuz
  mkdir -p modules/lib
  mv unpacked/lib/modules modules/lib/modules
  echo "${KIMAGE#linux-image-}" > release
  # The host may have no depmod; dom0's kmod runs here through dom0's own loader.
  R=$CACHE/dom0root
  "$R/lib64/ld-linux-x86-64.so.2" --library-path "$R/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu" \
    --argv0 depmod "$R/bin/kmod" -b "$CACHE/modules" "$(cat release)"
  rm -rf unpacked debs
  mark xen-kernel "$C"
fi

C=domu-1
if ! done_ domu "$C"; then
  update
  download debs busybox-static libdrm-tests libdrm2 libc6
  rm -rf unpacked domu
  for deb in debs/*.deb; do dpkg-deb -x "$deb" unpacked; done
  mkdir -p domu/bin domu/lib64 domu/lib/x86_64-linux-gnu
  cp unpacked/bin/busybox domu/bin/busybox
  cp unpacked/usr/bin/modetest domu/bin/modetest
  # modetest's loader and exactly the libraries it names (NEEDED), looked up in the
  # unpacked packages; a missing one fails here rather than in the guest.
  cp -L unpacked/lib64/ld-linux-x86-64.so.2 domu/lib64/
  for lib in $(objdump -p domu/bin/modetest | awk '$1 == "NEEDED" {print $2}'); do
    found=$(find unpacked -name "$lib" | head -n 1)
    [ -n "$found" ] || { echo "fetch.sh: modetest needs $lib, not in its packages" >&2; exit 1; }
    cp -L "$found" domu/lib/x86_64-linux-gnu/
  done
  rm -rf unpacked debs
  mark domu "$C"
fi
