#!/usr/bin/env bash
# Builds volstack's tiny bootable test guest: a Debian cloud kernel + a busybox initramfs whose /init
# runs a "disk exerciser" on the serial console. Nothing is installed on the host: the kernel .deb is
# fetched with `apt-get download` and unpacked with `dpkg-deb -x`; busybox comes from the host's
# busybox-static (scripts/install-host.sh) or, failing that, from a downloaded busybox-static .deb.
#
# usage: scripts/build-guest.sh [--force]      prints the output directory on stdout
# output: $VOLSTACK_GUEST_DIR (default ~/.cache/volstack/guest)/{vmlinuz,initrd.img,guest.env}
#         Rebuilt only when missing or when this script changed (stamp = its sha256); ~2 s, plus a
#         ~27 MB download the first time. Safe to run concurrently (flock).
#
# Boot it with TCG (KVM here is PVM and makes no progress with a real kernel), e.g.
#   qemu-system-x86_64 -accel tcg,tb-size=32 -machine q35 -cpu max -m 128 -nodefaults -display none \
#     -no-reboot -kernel vmlinuz -initrd initrd.img -append "console=ttyS0 quiet panic=-1" \
#     -chardev socket,id=con,path=console.sock,server=on,wait=off -serial chardev:con
# (tests/guest.py has GuestVM, which does this, and GuestConsole, which speaks the protocol below.)
#
# Console protocol (ttyS0, line based, no echo). The guest prints
#     VOLSTACK-GUEST READY kernel=<release>
# then executes each line it reads. A line is  [#TAG] COMMAND ARGS...  ; every output line of the
# command is prefixed with "#TAG " when a tag was given, and the last one is always  [#TAG ]END <rc>.
#   ping                               -> PONG
#   disks                              -> DISK <name> <serial> <bytes>   (one per virtio-blk/scsi disk)
#   dev SERIAL [TIMEOUT_S=10]          -> DEV /dev/vdX   (waits for a hot-plugged disk to appear)
#   write SERIAL SEED MIB [OFF_MIB=0]  -> WROTE <bytes>  (O_DIRECT + fsync; pattern below)
#   sum SERIAL MIB [OFF_MIB=0]         -> SUM <sha256 hex of MIB MiB read with O_DIRECT>
#   bench-read SERIAL MIB [BS=1M]      -> BENCH <bytes> <nanoseconds> <ops>   (dd O_DIRECT, to /dev/null)
#   bench-write SERIAL MIB [BS=1M]     -> BENCH <bytes> <nanoseconds> <ops>   (dd O_DIRECT, zeros)
#   bench read|write SERIAL BS COUNT   -> BENCH ...      (e.g. "bench read vol1 4k 256" for IOPS)
#   sh SHELL-COMMAND...                -> its output lines; rc = its exit status
#   poweroff                           -> BYE, then the guest powers off
# Errors print "ERR <text>" and a non-zero rc. BS accepts k/M suffixes. Timings come from
# /proc/timer_list (monotonic ns) and include starting dd (a few ms under TCG).
# Pattern of `write`: MiB number i (0-based) is the line "volstack seed=SEED mib=i\n" repeated and
# cut at 1 MiB (tests/guest.py: pattern_bytes / pattern_sha256 compute it on the host).
# The kernel command line may carry commands to run before READY: volstack.run="cmd1;cmd2;...".
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${VOLSTACK_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/volstack/guest}
mkdir -p "$OUT/debs"
exec 9>"$OUT/.lock"
flock 9

STAMP=$(sha256sum "$HERE/build-guest.sh" | cut -d' ' -f1)
if [ "${1:-}" != --force ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] \
   && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "$OUT"; exit 0
fi
log() { echo "build-guest: $*" >&2; }

# --- fetch the .debs (cached in $OUT/debs)
fetch_deb() { (cd "$OUT/debs" && apt-get download -q "$1" 2>&1 | grep -v -e 'unsandboxed' -e '^Get:' -e '^Fetched' >&2) || true; }
download() {  # PKG: apt-get download into $OUT/debs unless a .deb of it is there already
  ls "$OUT/debs/$1"_*.deb >/dev/null 2>&1 && return 0
  log "downloading $1"
  fetch_deb "$1"
  if ! ls "$OUT/debs/$1"_*.deb >/dev/null 2>&1; then   # stale package lists: the mirror moved on
    apt-get update -qq >&2 || true
    fetch_deb "$1"
  fi
  ls "$OUT/debs/$1"_*.deb >/dev/null 2>&1 || { log "could not download $1"; exit 1; }
}
kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=${VOLSTACK_GUEST_KERNEL_PKG:-$(kernel_pkg)}
if [ -z "$KPKG" ]; then
  ls "$OUT"/debs/linux-image-*-cloud-amd64_*.deb >/dev/null 2>&1 || { apt-get update -qq >&2 || true; }
  KPKG=$(kernel_pkg)
fi
if [ -z "$KPKG" ]; then   # offline with a cache: take the newest kernel .deb we have
  KPKG=$(ls "$OUT"/debs/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sed 's#.*/##; s#_.*##' | sort -V | tail -1)
fi
[ -n "$KPKG" ] || { log "cannot resolve the Debian cloud kernel package (linux-image-cloud-amd64)"; exit 1; }
download "$KPKG"

WORK=$(mktemp -d "$OUT/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
BB=/bin/busybox
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  download busybox-static
  dpkg-deb -x "$(ls "$OUT"/debs/busybox-static_*.deb | tail -1)" "$WORK/bb"
  BB=$WORK/bb/bin/busybox
fi
"$BB" true || { log "no usable busybox"; exit 1; }

log "unpacking $KPKG"
mkdir "$WORK/k"
dpkg-deb --fsys-tarfile "$(ls "$OUT/debs/$KPKG"_*.deb | tail -1)" \
  | tar -x -C "$WORK/k" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/*'
KVER=$(ls "$WORK/k/lib/modules")
KMOD=$WORK/k/lib/modules/$KVER/kernel

# --- kernel modules: the virtio disk stack, loaded with insmod in dependency order (no depmod/modprobe
# in the guest). Dependencies come from each module's own "depends=" modinfo field.
declare -A MODPATH=() SEEN=()
while IFS= read -r f; do n=${f##*/}; n=${n%.ko}; MODPATH[${n//-/_}]=$f; done < <(find "$KMOD" -name '*.ko')
ORDER=()
add_mod() {
  local m=${1//-/_} deps d
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN[$m]=1
  [ -n "${MODPATH[$m]:-}" ] || { log "module $m not found in $KPKG"; exit 1; }
  deps=$("$BB" strings "${MODPATH[$m]}" | sed -n 's/^depends=//p' | head -1)
  for d in ${deps//,/ }; do add_mod "$d"; done
  ORDER+=("$m")
}
for m in virtio_pci virtio_blk virtio_scsi sd_mod virtio_console; do add_mod "$m"; done

R=$WORK/root
mkdir -p "$R"/{bin,dev,proc,sys,tmp,lib/modules,volstack}
cp "$BB" "$R/bin/busybox"
for m in "${ORDER[@]}"; do cp "${MODPATH[$m]}" "$R/lib/modules/$m.ko"; done
printf '%s\n' "${ORDER[@]}" > "$R/lib/modules/order"

cat > "$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/printk          # keep kernel messages off the protocol console
while read -r m; do insmod "/lib/modules/$m.ko" || echo "insmod $m failed"; done < /lib/modules/order
hostname volstack-guest
run=$(sed -n 's/.*volstack\.run="\([^"]*\)".*/\1/p; t; s/.*volstack\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
# PID 1 must never exit (that panics the kernel): restart the exerciser if it ever returns.
/volstack/exerciser "$run" </dev/console >/dev/console 2>&1
while true; do /volstack/exerciser "" </dev/console >/dev/console 2>&1; done
EOF

cat > "$R/volstack/exerciser" <<'EOF'
#!/bin/sh
# volstack test-guest disk exerciser: the protocol is described in scripts/build-guest.sh.
TAG=
say() { if [ -n "$TAG" ]; then echo "$TAG $*"; else echo "$*"; fi; }
err() { say "ERR $*"; return 2; }
now_ns() { sed -n '/^now at /{s/^now at \([0-9]*\) nsecs.*/\1/p;q}' /proc/timer_list; }
bytes() {  # 4k / 1M / 512 -> bytes
  case $1 in
    *[kK]) echo $(( ${1%?} * 1024 )) ;;
    *[mM]) echo $(( ${1%?} * 1048576 )) ;;
    *) echo $(( $1 )) ;;
  esac
}
serial_of() {  # /sys/block/NAME -> serial (virtio-blk: serial; scsi: VPD page 0x80)
  if [ -r "$1/serial" ]; then cat "$1/serial"
  elif [ -r "$1/device/vpd_pg80" ]; then tail -c +5 "$1/device/vpd_pg80" | tr -d '\000' | sed 's/ *$//'
  fi
}
find_dev() {  # SERIAL [TIMEOUT_S] -> /dev/NAME, polling for hot-plugged disks
  [ -n "$1" ] || return 1
  end=$(( $(now_ns) + ${2:-10} * 1000000000 ))
  while :; do
    for b in /sys/block/vd* /sys/block/sd*; do
      [ -e "$b" ] || continue
      if [ "$(serial_of "$b")" = "$1" ] && [ -b "/dev/${b##*/}" ]; then echo "/dev/${b##*/}"; return 0; fi
    done
    [ "$(now_ns)" -lt "$end" ] || return 1
    sleep 0.05
  done
}
pattern() {  # SEED MIB -> the write pattern on stdout
  i=0
  while [ $i -lt "$2" ]; do yes "volstack seed=$1 mib=$i" | head -c 1048576; i=$((i + 1)); done
}
bench() {  # read|write DEV BS COUNT
  bs=$(bytes "$3") || return 2
  t0=$(now_ns)
  if [ "$1" = read ]; then dd if="$2" of=/dev/null bs="$bs" count="$4" iflag=direct 2>/tmp/dd.err
  else dd if=/dev/zero of="$2" bs="$bs" count="$4" oflag=direct 2>/tmp/dd.err; fi
  rc=$?
  t1=$(now_ns)
  [ $rc = 0 ] || { err "dd: $(tail -1 /tmp/dd.err)"; return 1; }
  grep -q "^$4+0 records" /tmp/dd.err || { err "short $1: $(head -1 /tmp/dd.err)"; return 1; }
  say "BENCH $((bs * $4)) $((t1 - t0)) $4"
}
dev_or_err() { DEV=$(find_dev "$1" "${2:-10}") || { err "no disk with serial '$1'"; return 2; }; }
run_cmd() {  # COMMAND ARGS...
  cmd=$1; shift
  case $cmd in
    ping) say PONG ;;
    disks)
      for b in /sys/block/vd* /sys/block/sd*; do
        [ -e "$b" ] && say "DISK ${b##*/} $(serial_of "$b") $(( $(cat "$b/size") * 512 ))"
      done; return 0 ;;
    dev) dev_or_err "$1" "$2" || return; say "DEV $DEV" ;;
    write)
      [ $# -ge 3 ] || { err "usage: write SERIAL SEED MIB [OFF_MIB]"; return; }
      dev_or_err "$1" || return
      pattern "$2" "$3" | dd of="$DEV" bs=1048576 count="$3" seek="${4:-0}" iflag=fullblock oflag=direct \
        conv=fsync,notrunc 2>/tmp/dd.err || { err "dd: $(tail -1 /tmp/dd.err)"; return 1; }
      grep -q "^$3+0 records out" /tmp/dd.err || { err "short write: $(tail -1 /tmp/dd.err)"; return 1; }
      say "WROTE $(( $3 * 1048576 ))" ;;
    sum)
      [ $# -ge 2 ] || { err "usage: sum SERIAL MIB [OFF_MIB]"; return; }
      dev_or_err "$1" || return
      s=$(dd if="$DEV" bs=1048576 count="$2" skip="${3:-0}" iflag=direct 2>/tmp/dd.err | sha256sum) \
        || { err "dd: $(tail -1 /tmp/dd.err)"; return 1; }
      grep -q "^$2+0 records in" /tmp/dd.err || { err "short read: $(head -1 /tmp/dd.err)"; return 1; }
      say "SUM ${s%% *}" ;;
    bench-read|bench-write)
      [ $# -ge 2 ] || { err "usage: $cmd SERIAL MIB [BS]"; return; }
      dev_or_err "$1" || return
      bs=$(bytes "${3:-1M}")
      bench "${cmd#bench-}" "$DEV" "$bs" $(( $2 * 1048576 / bs )) ;;
    bench)
      [ $# -ge 4 ] || { err "usage: bench read|write SERIAL BS COUNT"; return; }
      case $1 in read|write) ;; *) err "bench read|write ..."; return ;; esac
      dev_or_err "$2" || return
      bench "$1" "$DEV" "$3" "$4" ;;
    sh)
      ( eval "$REST" ) >/tmp/sh.out 2>&1
      rc=$?
      while IFS= read -r l; do say "$l"; done </tmp/sh.out
      return $rc ;;
    poweroff) say BYE; sync; poweroff -f ;;
    *) err "unknown command '$cmd'" ;;
  esac
}
line_cmd() {  # one protocol line
  line=$1
  set -f; set -- $line; set +f      # split words, but never glob what came from the console
  TAG=
  case ${1:-} in '#'*) TAG=$1; shift; line=${line#*"$TAG"} ;; esac
  [ $# -gt 0 ] || return 0
  REST=${line#*"$1"}
  run_cmd "$@"
  say "END $?"
}

stty -echo 2>/dev/null
if [ -n "${1:-}" ]; then   # commands from the kernel command line (volstack.run=)
  IFS=';'; set -f; set -- $1; set +f; unset IFS
  for c in "$@"; do line_cmd "$c"; done
fi
say "VOLSTACK-GUEST READY kernel=$(uname -r)"
while IFS= read -r l; do line_cmd "$l"; done
EOF
chmod +x "$R/init" "$R/volstack/exerciser"

(cd "$R" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -6 > "$WORK/initrd.img")
cp "$WORK"/k/boot/vmlinuz-* "$WORK/vmlinuz"
cat > "$WORK/guest.env" <<EOF
KERNEL_PKG=$KPKG
KERNEL_RELEASE=$KVER
MODULES="${ORDER[*]}"
BUSYBOX="$("$BB" 2>&1 | head -1)"
EOF
mv -f "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/guest.env" "$OUT/"
echo "$STAMP" > "$OUT/stamp"
# keep only the kernel .deb in use
for f in "$OUT"/debs/linux-image-*.deb; do case ${f##*/} in "$KPKG"_*) ;; *) rm -f "$f" ;; esac; done
log "kernel $KVER, modules: ${ORDER[*]}"
echo "$OUT"
