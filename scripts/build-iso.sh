#!/usr/bin/env bash
# Builds a small bootable ISO of the tiny guest (BIOS -> ISOLINUX (El Torito, no emulation) -> the kernel and
# initramfs of scripts/build-guest.sh), without mounting anything: a directory tree given to xorriso.
# Tests register it with registerIso and boot VMs from it (deployVirtualMachine templateid=<the ISO>) or
# insert it into a running guest's CD drive (attachIso).
#
# usage: scripts/build-iso.sh [--force]   prints the ISO's path on stdout
# output: $VOLSTACK_TEMPLATE_DIR (default ~/.cache/volstack/template)/volstack-tiny.iso
#         Rebuilt when missing or when this script or the guest changed; safe to run concurrently.
# Boots under TCG in a few seconds and prints "VOLSTACK-GUEST READY" on ttyS0 (protocol: build-guest.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${VOLSTACK_TEMPLATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/volstack/template}
ISOLINUX=/usr/lib/ISOLINUX/isolinux.bin
LDLINUX=/usr/lib/syslinux/modules/bios/ldlinux.c32
mkdir -p "$OUT"
exec 9>"$OUT/.iso.lock"
flock 9

command -v xorriso >/dev/null || { echo "build-iso: xorriso is missing (scripts/install-host.sh installs it)" >&2; exit 1; }
for f in "$ISOLINUX" "$LDLINUX"; do
  [ -f "$f" ] || { echo "build-iso: $f is missing (scripts/install-host.sh installs isolinux, syslinux-common)" >&2; exit 1; }
done
GUEST=$("$HERE/build-guest.sh")
STAMP=$(cat "$HERE/build-iso.sh" "$GUEST/vmlinuz" "$GUEST/initrd.img" | sha256sum | cut -d' ' -f1)
if [ "${1:-}" != --force ] && [ -s "$OUT/volstack-tiny.iso" ] && [ "$(cat "$OUT/iso.stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "$OUT/volstack-tiny.iso"; exit 0
fi

work=$(mktemp -d "$OUT/build-iso.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree/isolinux"
cp "$ISOLINUX" "$LDLINUX" "$work/tree/isolinux/"
cp "$GUEST/vmlinuz" "$GUEST/initrd.img" "$work/tree/"
cat > "$work/tree/isolinux/isolinux.cfg" <<'CFG'
DEFAULT volstack
PROMPT 0
TIMEOUT 0
SERIAL 0 115200
LABEL volstack
  KERNEL /vmlinuz
  APPEND initrd=/initrd.img console=ttyS0 quiet panic=-1
CFG
xorriso -as mkisofs -quiet -o "$work/volstack-tiny.iso" -V VOLSTACK_TINY -J -R \
  -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "$work/tree" \
  2>"$work/xorriso.log" || { cat "$work/xorriso.log" >&2; exit 1; }
mv "$work/volstack-tiny.iso" "$OUT/volstack-tiny.iso"
echo "$STAMP" > "$OUT/iso.stamp"
echo "$OUT/volstack-tiny.iso"
