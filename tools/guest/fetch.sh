#!/bin/sh
# Fetch and unpack what the arm64 test guest needs, with apt only and without installing:
# QEMU 10 from bookworm-backports (Debian 12's QEMU 7.2 refuses vhost-user-gpu under TCG) plus
# whichever of its libraries this host lacks, Debian's arm64 kernel (the generic flavour; the
# cloud one has no DRM), busybox-static:arm64, and libdrm's modetest (a KMS client: the guest
# changes its display mode with it) with the arm64 loader and libraries it links. Everything
# lands unpacked in CACHE_DIR/root; run QEMU with LD_LIBRARY_PATH=CACHE_DIR/root/usr/lib/x86_64-linux-gnu.
# Usage: fetch.sh CACHE_DIR. Idempotent: a stamp file holding CONTENT skips everything on
# reruns; bump CONTENT whenever what is fetched changes, so existing caches are refreshed.
# It prints each step and apt's "Get:" line for each package: the first run takes about
# a minute for about 190 MB.
set -eu
CACHE=${1:?usage: fetch.sh CACHE_DIR}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
STAMP=$CACHE/fetched.stamp
CONTENT="qemu kernel busybox modetest 2"
[ "$(cat "$STAMP" 2>/dev/null)" = "$CONTENT" ] && exit 0
rm -f "$STAMP"
step() { echo "guest files: $*"; }
# apt with only what shows progress (a "Get:" line per file) and what went wrong.
apt_get() {
    { apt-get "$@" 2>&1; echo $? > "$APT/status"; } | grep --line-buffered -E '^(Get:|Err:|Fetched|E:|W:)' || true
    return "$(cat "$APT/status")"
}

APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/debs"
# Reuse the machine's own Debian mirror rather than naming one.
URI=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$URI" ] || URI=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list)
printf 'deb %s bookworm main\ndeb %s bookworm-backports main\n' "$URI" "$URI" > "$APT/sources.list"
set -- -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null \
  -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" \
  -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o APT::Sandbox::User=root \
  -o Debug::NoLocking=1
step "reading the package lists of bookworm and bookworm-backports"
apt_get "$@" -q update
KERNEL=$(apt-cache "$@" depends linux-image-arm64:arm64 | awk '/Depends: linux-image-/ {print $2; exit}')
# Resolving against the host's own dpkg status fetches exactly the libraries it is missing.
step "fetching QEMU 10 and the libraries this host lacks"
apt_get "$@" -q -y --download-only --no-install-recommends -t bookworm-backports install \
  qemu-system-arm qemu-system-gui
cd "$CACHE/debs"
step "fetching the arm64 kernel ($KERNEL) and busybox"
apt_get "$@" -q download "$KERNEL" busybox-static:arm64
step "unpacking into $CACHE/root"
rm -rf "$CACHE/root"
for deb in "$CACHE"/debs/*.deb "$APT"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$CACHE/root"; done
# modetest and exactly what it loads (`readelf -d`: NEEDED libdrm.so.2 and libc.so.6; the
# interpreter /lib/ld-linux-aarch64.so.1), copied out of their packages: the rest of libc6
# and libdrm-tests is not needed.
mkdir -p "$CACHE/userland"
cd "$CACHE/userland"
step "fetching modetest and the arm64 libraries it links"
apt_get "$@" -q download libdrm-tests:arm64 libdrm2:arm64 libc6:arm64
for deb in *.deb; do dpkg-deb -x "$deb" unpacked; done
ARM64=$CACHE/root/usr/lib/aarch64-linux-gnu
mkdir -p "$ARM64"
cp -L unpacked/usr/bin/modetest "$CACHE/root/usr/bin/modetest"
cp -L unpacked/lib/ld-linux-aarch64.so.1 unpacked/lib/aarch64-linux-gnu/libc.so.6 \
  unpacked/usr/lib/aarch64-linux-gnu/libdrm.so.2 "$ARM64/"
cd "$CACHE"
rm -rf "$CACHE/userland"
# Keep the cache small: the guest needs six of the kernel's modules, and the packages
# themselves are not needed once unpacked.
find "$CACHE/root/lib/modules" -name '*.ko*' ! \( -name 'virtio_mmio.ko*' -o -name 'drm.ko*' \
  -o -name 'drm_kms_helper.ko*' -o -name 'drm_shmem_helper.ko*' -o -name 'virtio_dma_buf.ko*' \
  -o -name 'virtio-gpu.ko*' \) -delete
rm -rf "$CACHE/debs" "$APT"
echo "$CONTENT" > "$STAMP"
step "done, $(du -sh "$CACHE" | cut -f1) in $CACHE"
