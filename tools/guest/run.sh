#!/bin/sh
# Boot the arm64 guest tools/guest/fetch.sh fetched against a running
# `pvdisplay vhost-user-gpu --socket-path SOCKET`: Linux's virtio_gpu driver draws a test
# pattern on the first scanout, then takes commands typed on this console ("modeset
# 1024x768" changes the mode through KMS, an empty line restores it). Ctrl-A X quits QEMU.
# Usage: run.sh CACHE_DIR SOCKET [WIDTHxHEIGHT [OUTPUTS]]; WIDTHxHEIGHT is the back-end's
# --scanout (default 1280x800), OUTPUTS how many scanouts it serves (default 1).
set -eu
CACHE=${1:?usage: run.sh CACHE_DIR SOCKET [WIDTHxHEIGHT [OUTPUTS]]}
SOCKET=${2:?usage: run.sh CACHE_DIR SOCKET [WIDTHxHEIGHT [OUTPUTS]]}
SIZE=${3:-1280x800}
OUTPUTS=${4:-1}
ROOT=$CACHE/root
BUILD=$CACHE/build-$SIZE
TOOLS=$(dirname "$0")

[ -f "$CACHE/fetched.stamp" ] || { echo "no guest files in $CACHE: run make guest-files" >&2; exit 1; }
[ -S "$SOCKET" ] || {
    echo "no vhost-user socket at $SOCKET: start .venv/bin/pvdisplay vhost-user-gpu --socket-path $SOCKET first" >&2
    exit 1
}
if [ ! -f "$BUILD/initrd.gz" ] || [ -n "$(find "$TOOLS/init" "$TOOLS/mkinitramfs.py" "$CACHE/fetched.stamp" -newer "$BUILD/initrd.gz")" ]; then
    echo "building the guest's initramfs for $SIZE"
    "${PYTHON:-python3}" "$TOOLS/mkinitramfs.py" "$ROOT" "$SIZE" "$BUILD"
fi
echo "booting the guest against $SOCKET (Ctrl-A X quits)"
# The libraries and modules fetch.sh unpacked, not the host's; -L finds QEMU's data files
# there too. vhost-user reaches guest RAM only through descriptors: a shared memfd.
LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu \
QEMU_MODULE_DIR=$ROOT/usr/lib/x86_64-linux-gnu/qemu \
exec "$ROOT/usr/bin/qemu-system-aarch64" -M virt -cpu cortex-a57 -accel tcg -m 512 \
    -nodefaults -no-user-config -display none -serial mon:stdio \
    -L "$ROOT/usr/share/qemu" \
    -kernel "$ROOT/boot/vmlinuz-$(cat "$BUILD/release")" -initrd "$BUILD/initrd.gz" \
    -append "console=ttyAMA0 panic=-1 quiet pvd.mode=pattern" \
    -global virtio-mmio.force-legacy=false \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -chardev "socket,id=gpu,path=$SOCKET" \
    -device "vhost-user-gpu,chardev=gpu,max_outputs=$OUTPUTS"
