"""NFS pools in kernel-mount mode, for hosts that have a kernel NFS client (pool detail nfsmountmode=kernel).

The agent mounts the export (NFSv3) under `$VOLSTACK_NFS_MOUNT_ROOT/<pool uuid>` (default
/var/lib/volstack/mnt) and then uses it as a directory pool: guests open files, not nfs:// URLs.
A host without the client refuses the pool with the reason, so the management server records nothing;
the default userspace mode (QEMU's libnfs driver) needs no client at all.
"""
import os
import shutil
import subprocess

from volstack.agent import images, programs
from volstack.agent.errors import Unavailable


def kernel_client_problem(hostname: str) -> str | None:
    """Why this host cannot mount NFS with its kernel (None: it can)."""
    if shutil.which(programs.MOUNT_NFS) is None:
        return f"host {hostname} has no {programs.MOUNT_NFS} helper (install {programs.PACKAGES[programs.MOUNT_NFS]})"

    def registered() -> bool:
        try:
            with open("/proc/filesystems") as f:
                return any(line.split()[-1] == "nfs" for line in f if line.strip())
        except OSError:
            return False
    if not registered() and shutil.which(programs.MODPROBE):
        subprocess.run([programs.MODPROBE, "nfs"], capture_output=True, timeout=30)
    if not registered():
        return (f"the kernel of host {hostname} has no NFS client (no nfs in /proc/filesystems and the nfs module "
                "cannot be loaded)")
    return None


class KernelNfsPool(images.DirectoryPool):
    def __init__(self, spec: dict, hostname: str):
        nfs = images.NfsPool(spec, hostname)            # the same checks of server and export
        self.uuid, self.hostname = images.check_name(spec.get("uuid")), hostname
        self.host, self.export = nfs.host, nfs.export
        self.root = os.path.join(os.environ.get("VOLSTACK_NFS_MOUNT_ROOT", "/var/lib/volstack/mnt"), self.uuid)

    def _check(self) -> None:
        if os.path.ismount(self.root):
            return
        problem = kernel_client_problem(self.hostname)
        if problem:
            raise Unavailable(f"NFS pool {self.uuid} is set to kernel-mount mode but {problem}; use the default "
                              "userspace mode (pool detail nfsmountmode=userspace), which needs no kernel client")
        os.makedirs(self.root, exist_ok=True)
        r = subprocess.run([programs.MOUNT, "-t", "nfs", "-o", "vers=3", f"{self.host}:{self.export}", self.root],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Unavailable(f"mounting {self.host}:{self.export} on host {self.hostname} failed: "
                              f"{r.stderr.strip() or r.returncode}")
