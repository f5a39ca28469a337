#!/usr/bin/env bash
# Installs the Debian packages a volstack KVM host needs, and the storage tests with it:
#   QEMU + qemu-img (with the nfs/iscsi/rbd block drivers), a userspace NFS server (nfs-ganesha + rpcbind),
#   libnfs client tools (nfs-ls, nfs-cp), busybox-static (the tiny test guest's userland,
#   see scripts/build-guest.sh), the tools of scripts/build-template.sh and build-iso.sh, and Ceph: librados/librbd's
#   Python bindings for the agent's RBD pools, plus ceph-mon/ceph-osd/ceph-mgr/ceph-common for the
#   one-node test cluster (scripts/ceph-up.sh, which also needs iproute2's ss), curl, bzip2, xz-utils, zip for the download tests and
#   benchmark. Safe to run again: apt-get runs only when something is missing.
# Usage: scripts/install-host.sh            (root, Debian 12)
set -euo pipefail

pkgs=(
  qemu-utils          # qemu-img, qemu-io, qemu-nbd
  qemu-system-x86     # qemu-system-x86_64 (TCG and KVM)
  qemu-block-extra    # QEMU block drivers nfs:// (libnfs), iscsi:// (libiscsi), rbd:, ...
  nfs-ganesha         # userspace NFS server (no kernel nfsd on our hosts)
  nfs-ganesha-vfs     # ganesha's VFS backend: export a local directory
  rpcbind             # portmapper (NFSv3 MOUNT needs it) + rpcinfo
  libnfs-utils        # nfs-ls, nfs-cp, nfs-cat: userspace NFS clients for checks
  busybox-static      # userland of the test guest's initramfs (statically linked)
  dosfstools          # mkfs.fat, mtools, syslinux: the built-in template's bootable disk,
  mtools              #   made without mounting anything (scripts/build-template.sh)
  syslinux
  syslinux-common     # ldlinux.c32 and the BIOS modules: syslinux/isolinux only *recommend* it
  isolinux            # ISOLINUX and xorriso: the tiny guest as a bootable ISO (scripts/build-iso.sh) for the
  xorriso             #   ISO tests (registerIso, attachIso, deploy from an ISO)
  curl                # the download benchmark's reference (bench/bench_download.py)
  iproute2            # ss: scripts/ceph-up.sh finds a free port (priority "important": not on a minimal system)
  bzip2 xz-utils zip  # the download tests compress real images with the real tools
  python3-rados       # librados Python binding (agent: RBD pools, heartbeat objects); see docs/architecture.md
  python3-rbd         # librbd Python binding (agent: RBD images, snapshots, clones)
  ceph-common         # rbd and ceph CLIs (test cluster setup, bench's rbd export)
  ceph-mon            # the test cluster's monitor (tests/cephcluster.py)
  ceph-osd            # the test cluster's OSD (memstore)
  ceph-mgr            # the test cluster's manager: pool usage and capacity stats come from it
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Wait (up to 10 min) instead of failing when another apt/dpkg run holds the lock.
lock=(-o DPkg::Lock::Timeout=600)
apt-get "${lock[@]}" update -qq
# --no-install-recommends keeps out ovmf, dbus, ipxe ROMs for unused NICs and the like.
apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Without systemd (our test machines) nothing gets started: tests run their own ganesha and rpcbind.
# On a systemd host Debian enables nfs-ganesha.service and rpcbind; tests/nfsserver.py reuses a running
# rpcbind but refuses to run next to a foreign ganesha (systemctl disable --now nfs-ganesha for tests).
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "failed to install $p" >&2; exit 1; }
done
