"""DefaultPrimary: file-based pools reached by the hosts themselves (NFS, SharedMountPoint, local).

Images are qcow2 (or raw) files named by the volume's path in the pool root; the host agent does
the work with qemu-img and QEMU (NFS through QEMU's userspace nfs:// driver, never a kernel mount).
"""
from urllib.parse import unquote, urlparse

from volstack.errors import InvalidParameter

SCHEMES = {"nfs": ("NetworkFilesystem", 2049), "sharedmountpoint": ("SharedMountPoint", 0),
           "file": ("Filesystem", 0), "filesystem": ("Filesystem", 0)}
# Pool types: shared between hosts, and whether storage.overprovisioning.factor applies.
POOL_TYPES = {"NetworkFilesystem": {"shared": True, "overprovision": True},
              "SharedMountPoint": {"shared": True, "overprovision": True},
              "Filesystem": {"shared": False, "overprovision": True}}


# Pool detail for NFS: "userspace" (default, QEMU's libnfs driver) or "kernel" (the host mounts the export).
NFS_MOUNT_MODE = "nfsmountmode"
NFS_MOUNT_MODES = ("userspace", "kernel")


class DefaultPrimaryDriver:
    name = "DefaultPrimary"
    # encryption: LUKS through QEMU (qcow2's own LUKS encryption on these pools)
    CAPABILITIES = {"linked_clone": True, "hypervisor_qos": True, "live_migrate": True, "native_snapshot": False,
                    "revert": False, "storage_qos": False, "encryption": True}

    def parse_url(self, url: str) -> dict:
        p = urlparse(url.strip())
        scheme = p.scheme.lower()
        if scheme not in SCHEMES:
            raise InvalidParameter(f"Unable to figure out the scheme of url {url}: DefaultPrimary pools are "
                                   "nfs://host/path, SharedMountPoint://localhost/path or file://localhost/path")
        pool_type, port = SCHEMES[scheme]
        path = unquote(p.path or "")
        if not path.startswith("/") or path.rstrip("/") == "":
            raise InvalidParameter(f"The url {url} has no usable path: give an absolute directory (or NFS export)")
        host = p.hostname or ""
        if pool_type == "NetworkFilesystem" and not host:
            raise InvalidParameter(f"The NFS url {url} needs a server: nfs://<server>/<export>")
        if ".." in path.split("/"):
            raise InvalidParameter(f"The path of {url} must not contain '..'")
        return {"pool_type": pool_type, "host_address": host or "localhost", "path": path.rstrip("/") or "/",
                "port": p.port or port}

    def check_details(self, pool_type: str, details: dict) -> None:
        mode = details.get(NFS_MOUNT_MODE)
        if mode is None:
            return
        if pool_type != "NetworkFilesystem":
            raise InvalidParameter(f"{NFS_MOUNT_MODE} applies to NFS pools only")
        if mode not in NFS_MOUNT_MODES:
            raise InvalidParameter(f"{NFS_MOUNT_MODE} must be userspace (QEMU's NFS client, the default) or kernel "
                                   f"(the hosts mount the export), not {mode!r}")

    def spec(self, pool) -> dict:
        """How the host agent is told about the pool."""
        out = {"uuid": pool.uuid, "type": pool.pool_type, "path": pool.path}
        if pool.pool_type == "NetworkFilesystem":
            out.update(host=pool.host_address, export=pool.path)
            if (pool.details or {}).get(NFS_MOUNT_MODE) == "kernel":
                out["mount"] = "kernel"
        if pool.capacity_bytes:
            out["capacity"] = pool.capacity_bytes
        return out

    def is_shared(self, pool) -> bool:
        return POOL_TYPES[pool.pool_type]["shared"]

    def overprovisions(self, pool) -> bool:
        return POOL_TYPES[pool.pool_type]["overprovision"]

    # ---------------------------------------------------------------- host operations

    def connect(self, ch, pool) -> dict:
        return ch.call("pool_connect", pool=self.spec(pool))

    def disconnect(self, ch, pool) -> None:
        ch.call("pool_disconnect", pool=self.spec(pool))

    def stats(self, ch, pool) -> dict:
        return ch.call("pool_stats", pool=self.spec(pool))

    def create_volume(self, ch, pool, volume, encryption: dict | None = None) -> dict:
        """encryption: {"format": "luks", "secret": …} for an encrypted volume (services/encryption.py)."""
        return ch.call("volume_create", pool=self.spec(pool), name=volume.path, size=volume.size,
                       format=volume.format.lower(), provisioning=volume.provisioning_type,
                       **({"encryption": encryption} if encryption else {}))

    def clone_volume(self, ch, pool, volume, base: str, base_format: str) -> dict:
        """A ROOT volume as a linked clone of a template's cached copy on the same pool."""
        return ch.call("volume_clone", pool=self.spec(pool), name=volume.path, base=base, base_format=base_format,
                       size=volume.size)

    def delete_volume(self, ch, pool, volume) -> None:
        ch.call("volume_delete", pool=self.spec(pool), name=volume.path)

    def resize_volume(self, ch, pool, volume, size: int, shrink_ok: bool, encryption: dict | None = None) -> dict:
        return ch.call("volume_resize", pool=self.spec(pool), name=volume.path, size=size,
                       format=volume.format.lower(), shrink_ok=shrink_ok,
                       **({"encryption": encryption} if encryption else {}))

    def list_objects(self, ch, pool, path: str) -> list:
        return ch.call("pool_list", pool=self.spec(pool), path=path)["entries"]

    def disk(self, pool, volume, device_id, qos, encryption: dict | None = None) -> dict:
        """How a guest sees the volume: the serial is the volume uuid without dashes (20 chars max)."""
        return {"pool": self.spec(pool), "name": volume.path, "format": volume.format.lower(),
                "serial": serial_of(volume), "device_id": device_id, "qos": qos,
                **({"encryption": encryption} if encryption else {})}


def serial_of(volume) -> str:
    return volume.uuid.replace("-", "")[:20]
