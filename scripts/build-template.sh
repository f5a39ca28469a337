#!/usr/bin/env bash
# Builds volstack's built-in template: a small disk that really boots (BIOS -> SYSLINUX -> the tiny guest
# kernel and initramfs of scripts/build-guest.sh), made without mounting anything: a FAT "superfloppy"
# written with mkfs.fat, `syslinux --install` and mcopy, converted to qcow2. `volstack up` registers it
# as the BUILTIN template, so a newcomer deploys a VM from a template with no internet access.
#
# usage: scripts/build-template.sh [--force]   prints the qcow2's path on stdout
# output: $VOLSTACK_TEMPLATE_DIR (default ~/.cache/volstack/template)/volstack-tiny.qcow2
#         Rebuilt when missing or when this script or the guest changed; safe to run concurrently.
# Boots under TCG in about a second and prints "VOLSTACK-GUEST READY" on ttyS0 (protocol: build-guest.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${VOLSTACK_TEMPLATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/volstack/template}
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

for tool in mkfs.fat syslinux mcopy qemu-img; do
  command -v "$tool" >/dev/null || { echo "build-template: $tool is missing (scripts/install-host.sh installs it)" >&2; exit 1; }
done
GUEST=$("$HERE/build-guest.sh")
STAMP=$(cat "$HERE/build-template.sh" "$GUEST/vmlinuz" "$GUEST/initrd.img" | sha256sum | cut -d' ' -f1)
if [ "${1:-}" != --force ] && [ -s "$OUT/volstack-tiny.qcow2" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "$OUT/volstack-tiny.qcow2"; exit 0
fi

work=$(mktemp -d "$OUT/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mib=$(( ( $(stat -c%s "$GUEST/vmlinuz") + $(stat -c%s "$GUEST/initrd.img") ) / 1048576 + 8 ))
truncate -s "${mib}M" "$work/disk.img"
mkfs.fat -n VOLSTACK "$work/disk.img" >/dev/null
syslinux --install "$work/disk.img"
cat > "$work/syslinux.cfg" <<'CFG'
DEFAULT volstack
PROMPT 0
TIMEOUT 0
SERIAL 0 115200
LABEL volstack
  KERNEL vmlinuz
  APPEND initrd=initrd.img console=ttyS0 quiet panic=-1
CFG
mcopy -i "$work/disk.img" "$GUEST/vmlinuz" "$GUEST/initrd.img" "$work/syslinux.cfg" ::/
qemu-img convert -q -f raw -O qcow2 -c "$work/disk.img" "$work/volstack-tiny.qcow2"
mv "$work/volstack-tiny.qcow2" "$OUT/volstack-tiny.qcow2"
echo "$STAMP" > "$OUT/stamp"
echo "$OUT/volstack-tiny.qcow2"
