"""Every program and system file the host agent runs or loads, in one place.

The agent's code runs these names (never a literal of its own), its errors name the Debian package a host
lacks, and tests/test_install_guard.py checks that each one comes from a package the install scripts name
(scripts/install-host.sh) or one every Debian 12 system has, so a tool that happens to be on one machine
never stands in for an install step.
"""
QEMU_IMG = "qemu-img"
QEMU_SYSTEM = "qemu-system-x86_64"
QEMU_STORAGE_DAEMON = "qemu-storage-daemon"
MOUNT = "mount"
MOUNT_NFS = "mount.nfs"
MODPROBE = "modprobe"

# program -> the Debian (12) package that provides it
PACKAGES = {
    QEMU_IMG: "qemu-utils",
    QEMU_SYSTEM: "qemu-system-x86",
    QEMU_STORAGE_DAEMON: "qemu-system-common",     # a dependency of qemu-system-x86
    MOUNT: "mount",
    MOUNT_NFS: "nfs-common",
    MODPROBE: "kmod",
}
# Only NFS pools in kernel-mount mode use these, and such a pool is refused with the reason on a host
# without them (agent/nfsmount.py): the default userspace mode needs no kernel client.
OPTIONAL = {MOUNT_NFS, MODPROBE}

# Debian's Python bindings of librados/librbd, loaded from Debian's dist-packages (a venv does not see it)
DEBIAN_PYTHON = "/usr/lib/python3/dist-packages"
PYTHON_MODULES = {"rados": "python3-rados", "rbd": "python3-rbd"}


def not_installed(program: str) -> str:
    """The error text for a host without `program`."""
    return f"{program} is not installed on this host (Debian package {PACKAGES[program]})"
